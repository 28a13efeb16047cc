"""Every registered detector keeps the contract (detectors.contract); plug-ins are found and held to it."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pytest
import torch

from detectors import registry
from detectors.base import Detector, DetectorConfig, DetectorOutput, ImageBatch, as_image_tensor
from detectors.contract import check_detector, contract_images
from detectors.registry import BUILTIN, ENTRY_POINT_GROUP, PluginError, register_detector

CPU = {"device": "cpu", "progress": False}
# Options that make each built-in's fit take seconds: the contract is about shapes and promises, not quality.
FAST = {
    "patchcore": {**CPU, "coreset_ratio": 0.5},
    "padim": CPU,
    "rd4ad": {**CPU, "epochs": 1, "batch_size": 3},
    "fastflow": {**CPU, "epochs": 1, "batch_size": 3},
    "efficientad": {**CPU, "teacher_steps": 2, "steps": 2, "batch_size": 2, "out_channels": 16},
    "draem": {**CPU, "steps": 2, "batch_size": 2, "base_width": 8, "disc_width": 8},
    "pfm": {**CPU, "epochs": 1, "batch_size": 3, "latent_dims": "8+8+8"},
    "pefm": {**CPU, "epochs": 1, "batch_size": 3, "latent_dims": "8+8+8"},
    "simplenet": {**CPU, "epochs": 1, "batch_size": 3, "embed_dim": 32, "pretrain_dim": 32, "disc_hidden": 16},
    "cdo": {**CPU, "epochs": 1, "batch_size": 3},
    "cfa": {**CPU, "epochs": 1, "batch_size": 3},
    "mspba": {**CPU, "epochs": 1, "samples_per_image": 2, "batch_size": 4},
    "altub": {**CPU, "epochs": 1, "batch_size": 3, "flow_steps": 2},
    "ast": {**CPU, "teacher_epochs": 1, "student_epochs": 1, "batch_size": 3, "student_hidden": 16},
    "cflow": {**CPU, "meta_epochs": 1, "sub_epochs": 1, "coupling_blocks": 2, "condition_dim": 16},
    "msflow": {**CPU, "epochs": 1, "batch_size": 3, "parallel_blocks": "1+1+1", "condition_dim": 16},
    "memseg": {**CPU, "steps": 2, "batch_size": 2, "decoder_width": 4, "memory_size": 3},
    "ppdm": {
        **CPU,
        "epochs": 1,
        "batch_size": 3,
        "offset_width": 4,
        "reduce_channels": 8,
        "bottleneck_channels": 16,
        "bottleneck_blocks": 1,
        "codebook_size": 8,
    },
    "feature_dictionary": {**CPU, "n_words": 4},
    "variation_model": CPU,
    "ae_l2": {**CPU, "steps": 2, "batch_size": 2, "width": 4, "latent_dim": 8},
    "ae_ssim": {**CPU, "steps": 2, "batch_size": 2, "width": 4, "latent_dim": 8},
    "anogan": {**CPU, "gan_steps": 2, "encoder_steps": 2, "batch_size": 2, "width": 4, "latent_dim": 8, "n_critic": 1},
    "riad": {**CPU, "epochs": 1, "batch_size": 3, "image_size": 32, "width": 4, "cell_sizes": "8+16"},
    "students": {**CPU, "epochs": 1, "batch_size": 3, "width": 4, "out_channels": 8},
}
OTHER_STRINGS = {
    "backbone": "resnet18",
    "layers": "layer2",
    "teacher_layers": "layer3",
    "model_size": "medium",
}


@pytest.mark.parametrize("cls", BUILTIN, ids=[c.name for c in BUILTIN])
def test_every_builtin_detector_keeps_the_contract(cls: type[Detector], one_torch_thread) -> None:
    check_detector(cls, FAST[cls.name], OTHER_STRINGS)


@dataclass(frozen=True)
class MeanDistanceConfig(DetectorConfig):
    blur: int = 1  # box filter side over the pixel distance: result-changing, so in the cache key


class MeanDistance(Detector):
    """A real, tiny plug-in: each pixel's distance from the good images' mean image."""

    name = "meandistance"
    config_class = MeanDistanceConfig

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images)
        self.mean_ = x.mean(0)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        x = as_image_tensor(images)
        self._check_fitted(x)
        d = (x - self.mean_).norm(dim=1, keepdim=True)
        k = self.config.blur
        d = torch.nn.functional.avg_pool2d(d, k, stride=1, padding=k // 2, count_include_pad=False)[..., :, :]
        maps = d[:, 0, : x.shape[-2], : x.shape[-1]]
        return DetectorOutput(maps.numpy().astype(np.float32), maps.flatten(1).amax(1).numpy().astype(np.float32))

    def _state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean_}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean_ = state["mean"]


@pytest.fixture
def clean_registry():
    """Entry points are looked up afresh; the registry is restored after the test by tests/conftest.py."""
    registry._plugins_loaded = False


def test_a_registered_plugin_keeps_the_contract_and_breaking_it_fails(clean_registry) -> None:
    det = check_detector(MeanDistance, {"device": "cpu"})
    assert registry.detector_class("meandistance") is MeanDistance
    fit, test = contract_images()
    assert det.predict(test).scores.min() > det.predict(fit).scores.max()  # the square is found

    class Impure(MeanDistance):  # scores depend on the batch: not a pure function of the image
        name = "impure"

        def predict(self, images: ImageBatch) -> DetectorOutput:
            out = super().predict(images)
            return DetectorOutput(out.maps - out.maps.mean(), out.scores - out.scores.mean())

    with pytest.raises(AssertionError, match="an image alone"):
        check_detector(Impure, {"device": "cpu"})

    @dataclass(frozen=True)
    class Unkeyed(MeanDistanceConfig):
        RESULT_NEUTRAL: ClassVar[Mapping[str, str]] = {**MeanDistanceConfig.RESULT_NEUTRAL, "blur": ""}

    class NoReason(MeanDistance):
        name = "noreason"
        config_class = Unkeyed

    with pytest.raises(AssertionError, match="say why"):
        check_detector(NoReason, {"device": "cpu"})


def test_registration_refuses_what_would_break_the_cli(clean_registry) -> None:
    class Clash(MeanDistance):
        name = "patchcore"

    class Spaced(MeanDistance):
        name = "my detector"

    with pytest.raises(PluginError, match=r"taken by detectors\.patchcore\.PatchCore"):
        register_detector(Clash)
    with pytest.raises(PluginError, match="lower-case letters"):
        register_detector(Spaced)
    with pytest.raises(PluginError, match=r"subclass detectors\.base\.Detector"):
        register_detector(dict)  # type: ignore[arg-type]
    assert register_detector(Clash, replace=True) is Clash


PLUGIN = """
from tests.detectors.test_contract import MeanDistance


class Installed(MeanDistance):
    name = "installed"


class Misnamed(MeanDistance):
    name = "other"
"""


def test_an_installed_package_is_found_through_its_entry_point(clean_registry, tmp_path: Path, monkeypatch) -> None:
    """A real distribution on sys.path (a .dist-info with entry_points.txt), as pip would install it."""
    (tmp_path / "segad_plugin_demo.py").write_text(PLUGIN)
    info = tmp_path / "segad_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: segad-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
        [{ENTRY_POINT_GROUP}]
        installed = segad_plugin_demo:Installed
        wrong = segad_plugin_demo:Misnamed
        broken = segad_plugin_demo:Nowhere
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning) as caught:
        found = registry.available()
    assert found["installed"].__name__ == "Installed" and "wrong" not in found and "other" not in found
    messages = " ".join(str(w.message) for w in caught)
    assert "plug-in wrong" in messages and "class's name is 'other'" in messages and "plug-in broken" in messages
    # The CLI's names, the cache and a saved detector all reach it by name.
    det = registry.make_detector("installed", device="cpu").fit(contract_images()[0])
    loaded = registry.load_detector(det.save(tmp_path / "d.safetensors"))
    assert type(loaded).__name__ == "Installed"
    sys.modules.pop("segad_plugin_demo", None)


def test_segad_train_stacks_a_plugin_and_its_saved_model_reloads(clean_registry, tiny_mvtec: Path, tmp_path) -> None:
    from segad.pipeline import SegadPipeline
    from segad.train import parse_args, run

    register_detector(MeanDistance)
    cfg = parse_args(["--data", str(tiny_mvtec), "--image-size", "64", "--shots", "3", "--seeds", "1",
                      "--holdout", "0.3", "--detectors", "meandistance,padim", "--device", "cpu",
                      "--no-mlflow"])  # fmt: skip
    result = run(cfg)
    assert [m.name for m in result.methods][:2] == ["meandistance", "padim"]
    model = SegadPipeline.load(result.pipeline.save(tmp_path / "model"), device="cpu")
    test = [result.dataset_table.test[i] for i in result.first_seed_test]
    out = model.predict([s.image_path for s in test], [s.segment_path for s in test])
    np.testing.assert_allclose(out.scores, result.first_seed_scores["segad"], rtol=0, atol=1e-5)
