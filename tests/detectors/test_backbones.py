from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detectors import BackboneWeightsError, load_backbone, resolve_device
from detectors.backbones import STRIDES, torchvision_weights_path
from segad.data.images import normalise, resize

# ImageNet classes of cats: tabby 281, tiger cat 282, Persian 283, Siamese 284, Egyptian cat 285.
CAT_CLASSES = {281, 282, 283, 284, 285}


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0")


def test_shipped_weights_classify_a_real_photograph(lite0) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    img = resize(skimage_data.chelsea().astype(np.float32) / 255.0, 224)
    with torch.no_grad():
        probs = lite0.classify(torch.from_numpy(normalise(img))[None]).softmax(1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.8


def test_four_levels_at_their_strides(lite0) -> None:
    feats = lite0(torch.zeros(2, 3, 64, 96))
    for name, stride in STRIDES.items():
        assert feats[name].shape == (2, lite0.channels[name], 64 // stride, 96 // stride)
    assert set(lite0(torch.zeros(1, 3, 32, 32), layers=("layer2",))) == {"layer2"}
    assert not any(p.requires_grad for p in lite0.parameters())


def test_unknown_backbone_and_layer() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        load_backbone("vit_huge")
    with pytest.raises(ValueError, match="unknown backbone layers"):
        load_backbone()(torch.zeros(1, 3, 32, 32), layers=("layer9",))


def test_torchvision_backbone_without_cached_weights_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackboneWeightsError, match=r"(?s)resnet18.*not there.*IMAGENET1K_V1"):
        load_backbone("resnet18")


def test_torchvision_backbone_loads_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    path = torchvision_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    net = load_backbone("resnet18")
    assert torch.equal(net.net.conv1.weight, reference.conv1.weight)  # the cached file, not a fresh init
    assert net(torch.zeros(1, 3, 64, 64))["layer3"].shape == (1, 256, 4, 4)


def test_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")
