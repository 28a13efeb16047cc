from __future__ import annotations

import numpy as np
import pytest

from detectors import BackboneWeightsError, InputError, make_detector
from detectors.base import as_image_tensor
from detectors.device import DeviceUnavailableError, resolve_device
from detectors.patchcore import PatchCoreConfig


def test_bad_options_raise_the_projects_input_error() -> None:
    """The CLI turns only InputError into a clean message, so the user's mistakes must raise it."""
    with pytest.raises(InputError, match="no option"):
        make_detector("patchcore", nope=1)
    with pytest.raises(InputError, match="no option"):
        PatchCoreConfig.from_params({"nope": "1"})
    with pytest.raises(InputError, match="is not a int"):
        PatchCoreConfig.from_params({"avg_kernel": "three"})
    with pytest.raises(InputError, match="unknown detector"):
        make_detector("nope")
    with pytest.raises(InputError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    with pytest.raises(InputError, match="model_size"):
        make_detector("efficientad", model_size="huge")
    with pytest.raises(InputError, match="empty"):
        as_image_tensor(np.zeros((0, 3, 8, 8), np.float32))


def test_setup_errors_are_input_errors_and_keep_their_old_type() -> None:
    assert issubclass(BackboneWeightsError, InputError) and issubclass(BackboneWeightsError, RuntimeError)
    assert issubclass(DeviceUnavailableError, InputError) and issubclass(DeviceUnavailableError, RuntimeError)
    assert issubclass(InputError, ValueError)  # callers catching ValueError keep working
