from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from detectors.maps import gaussian_blur, parse_layers, to_image_maps


def test_blur_matches_scipy() -> None:
    x = np.random.default_rng(0).random((2, 40, 50)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(x), 4.0).numpy()
    ref = np.stack([gaussian_filter(m, 4.0, mode="mirror", truncate=4.0) for m in x])
    assert np.allclose(ours, ref, atol=1e-5)


def test_upsampled_map_has_the_image_size() -> None:
    out = to_image_maps(torch.rand(3, 8, 8), (64, 64), sigma=4.0)
    assert out.shape == (3, 64, 64)


def test_layers_string() -> None:
    assert parse_layers("layer2+layer3") == ("layer2", "layer3")
    assert parse_layers("layer1, layer2") == ("layer1", "layer2")
