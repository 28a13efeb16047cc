"""anomalib's models as segad detectors: real anomalib 2.7 models on tiny images, fit through its Engine."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("anomalib", reason="the [anomalib] extra is not installed")

from detectors.anomalib_models import canonical_name
from detectors.cache import MapCache
from detectors.contract import check_detector, contract_images
from detectors.errors import InputError
from detectors.registry import detector_class, make_detector

CPU = {"device": "cpu", "progress": False}


@pytest.mark.parametrize(
    ("name", "params"),
    [("anomalib_patchcore", {**CPU, "init_args": "coreset_sampling_ratio=0.5"}), ("anomalib_padim", CPU)],
)
def test_anomalib_models_keep_the_detector_contract(name: str, params: dict) -> None:
    det = check_detector(
        detector_class(name), params, {"backbone": "resnet18", "layers": "blocks.2", "init_args": "x=1"}
    )
    fit, test = contract_images()
    assert det.predict(test).scores.min() > det.predict(fit).scores.max()  # the bright square is found


def test_names_options_and_their_errors() -> None:
    assert canonical_name("anomalib:Patchcore") == "anomalib_patchcore"
    assert canonical_name("anomalib:EfficientAd") == "anomalib_efficient_ad"
    with pytest.raises(InputError, match="anomalib has no image model 'Nope'"):
        canonical_name("anomalib:Nope")
    with pytest.raises(InputError, match="use NAME=VALUE"):
        make_detector("anomalib_patchcore", init_args="oops")
    with pytest.raises(InputError, match="anomalib cannot build padim"):
        make_detector("anomalib_padim", **CPU, init_args="no_such_option=1").fit(contract_images()[0])


def test_a_model_trained_with_anomalib_loads_from_its_checkpoint(tmp_path: Path) -> None:
    """The user's own training run (anomalib's Engine, its checkpoint callback) -> the same maps in segad."""
    from anomalib.data import ImageBatch
    from anomalib.engine import Engine

    from detectors.anomalib_models import _Good

    fit, test = contract_images()
    trained = make_detector("anomalib_padim", **CPU)
    lightning = trained._build()
    loader = torch.utils.data.DataLoader(_Good(torch.as_tensor(fit)), batch_size=4, collate_fn=ImageBatch.collate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Engine(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False).fit(
            lightning, train_dataloaders=loader
        )
    ckpt = next(tmp_path.rglob("*.ckpt"))
    with torch.inference_mode():
        expected = lightning.model.eval()(torch.as_tensor(test)).anomaly_map[:, 0].numpy()
    det = make_detector("anomalib_padim", **CPU, checkpoint=str(ckpt)).fit(fit)
    np.testing.assert_allclose(det.predict(test).maps, expected, rtol=0, atol=1e-5)
    # The key holds the checkpoint's content: retraining into the same path is another detector.
    key = MapCache.key(det, (8, 8), ["a"], device_type="cpu")
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")
    assert MapCache.key(det, (8, 8), ["a"], device_type="cpu") != key
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable anomalib checkpoint"):
        make_detector("anomalib_padim", **CPU, checkpoint=str(ckpt)).fit(fit)


def test_segad_train_stacks_an_anomalib_model_caches_it_and_reloads_it(tiny_mvtec: Path, tmp_path: Path) -> None:
    from segad.pipeline import SegadPipeline
    from segad.train import parse_args, run

    args = ["--data", str(tiny_mvtec), "--image-size", "64", "--shots", "3", "--seeds", "1", "--holdout", "0.3",
            "--detectors", "anomalib:Patchcore,padim",
            "--set", "anomalib:Patchcore.init_args=coreset_sampling_ratio=0.5",
            "--device", "cpu", "--no-mlflow"]  # fmt: skip
    result = run(parse_args(args))
    assert [m.name for m in result.methods][:2] == ["anomalib_patchcore", "padim"]
    assert result.detector_maps["anomalib_patchcore"].fit_seconds > 0
    again = run(parse_args(args))
    assert again.detector_maps["anomalib_patchcore"].fit_seconds == 0  # the fit and its maps came from the cache
    assert again.first_seed_scores["segad"].tolist() == result.first_seed_scores["segad"].tolist()
    model = SegadPipeline.load(result.pipeline.save(tmp_path / "model"), device="cpu")
    test = [result.dataset_table.test[i] for i in result.first_seed_test]
    out = model.predict([s.image_path for s in test], [s.segment_path for s in test])
    # To 1e-4 (relative too): one thread's float32 scores move with the batch, and z-scoring scales that.
    np.testing.assert_allclose(out.scores, result.first_seed_scores["segad"], rtol=1e-4, atol=1e-4)
