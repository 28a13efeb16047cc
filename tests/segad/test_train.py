from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segad.data.synthetic import SyntheticSpec, write_mvtec
from segad.train import main

SMALL = SyntheticSpec(image_size=96, n_train=80, n_test_good=8, n_defects_per_type=3, seed=5)


@pytest.fixture
def small_mvtec(tmp_path: Path) -> Path:
    write_mvtec(SMALL, tmp_path / "small")
    return tmp_path / "small"


def test_runs_the_protocol_and_writes_the_summary(small_mvtec: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "summary.json"
    args = [
        "--data",
        str(small_mvtec),
        "--image-size",
        "96",
        "--shots",
        "5",
        "--generated",
        "4",
        "--seeds",
        "3",
        "--device",
        "cpu",
    ]
    args += ["--set", "patchcore.coreset_ratio=0.25", "--model-dir", str(tmp_path / "model")]
    assert main([*args, "--summary-json", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("patchcore", "padim", "ensemble", "segad"):
        assert name in printed
    summary = json.loads(out.read_text())
    assert set(summary["methods"]) == {"patchcore", "padim", "ensemble", "segad", "classifier"}
    # Each seed's final score is one of the candidates, chosen by its AUROC on the training rows.
    assert [s["seed"] for s in summary["selection"]] == [333, 576, 725]
    for s in summary["selection"]:
        assert s["chosen"] in s["inner_auroc"] and "ensemble" in s["inner_auroc"]
    assert summary["methods"]["segad"]["auroc_mean"] > 0.9
    for m in summary["methods"].values():
        assert [r["seed"] for r in m["per_seed"]] == [333, 576, 725]
        assert 0.0 <= m["auroc_mean"] <= 1.0 and 0.0 <= m["fpr95_mean"] <= 1.0
    # The planted defects are obvious: the detectors must separate them.
    assert summary["methods"]["patchcore"]["auroc_mean"] > 0.9
    assert summary["config"]["shots"] == 5
    # The saved model loads on its own and scores images.
    from segad.data import load_dataset
    from segad.pipeline import SegadPipeline

    model = SegadPipeline.load(tmp_path / "model", device="cpu")
    test = load_dataset(small_mvtec).test
    out = model.predict([s.image_path for s in test], [s.segment_path for s in test])
    assert out.scores.shape == (len(test),) and np.isfinite(out.scores).all()
    assert set(out.maps) == {"patchcore", "padim"} and out.maps["padim"].shape == (len(test), 96, 96)
    labels = np.array([s.label for s in test])
    assert out.scores[labels == 1].mean() > out.scores[labels == 0].mean()
    # Second run: every map comes from the cache and the numbers are the same.
    again = tmp_path / "again.json"
    assert main([*args, "--summary-json", str(again)]) == 0
    second = json.loads(again.read_text())
    assert all(d["cached_maps"] > 0 and d["fit_seconds"] == 0 for d in second["detectors"].values())
    assert second["methods"] == summary["methods"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shots", "99"], "--shots 99: .* has 10 test defects"),
        (["--detectors", "patchcore,fastflux"], "unknown detector 'fastflux'"),
        (["--seeds", "11"], "--seeds must be between 1 and 10"),
        (["--set", "patchcore.coreset=0.1"], "patchcore has no option 'coreset'"),
        (["--set", "coreset_ratio=0.1"], "use DETECTOR.OPTION=VALUE"),
        (["--classifier", "logreg", "--classifier-params", "max_depth=3"], "logreg takes only C"),
        (["--target-fpr", "0"], r"--target-fpr must be in \(0, 1\)"),
        (["--tuning-share", "1"], r"--tuning-share must be in \[0, 1\)"),
        (["--image-size", "7"], "--image-size must be at least 32 pixels"),
        (["--image-size", "0"], "--image-size must be at least 32 pixels"),
        (["--holdout", "0"], r"--holdout must be in \(0, 1\)"),
        (["--classifier-params", "foo=3"], "--classifier-params foo: not an XGBoost parameter"),
        (["--set", "fastflow.epochs=2"], "fastflow is not among --detectors patchcore,padim"),
        (["--supervised", "devnett"], "--supervised: unknown method 'devnett'; known: devnet"),
        (["--supervised", "devnet,devnet"], "a method is named twice"),
        (["--set", "devnet.epochs=2"], "devnet is not among --supervised '' or --detectors patchcore,padim; add it"),
        (["--supervised", "devnet", "--set", "devnet.epoch=2"], "devnet has no option 'epoch'"),
        (["--supervised", "devnet", "--set", "devnet.margin=-1"], "DevNetConfig.margin must be positive"),
    ],
)
def test_bad_options_fail_before_any_work(tiny_mvtec: Path, capsys, extra: list[str], message: str) -> None:
    assert main(["--data", str(tiny_mvtec), "--image-size", "64", *extra]) == 2
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(message, err), err


@pytest.mark.parametrize("where", ["model", "summary", "cache", "device"])
def test_unusable_outputs_and_devices_fail_before_any_fit(
    tiny_mvtec: Path, tmp_path: Path, capsys, monkeypatch, where: str
) -> None:
    """They used to fail after the whole run (a model folder under a file) or at the first fit."""
    import torch

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEGAD_CACHE_DIR", str(a_file / "cache" if where == "cache" else cache))
    extra, message = {
        "model": (["--model-dir", str(a_file / "model")], f"--model-dir {a_file / 'model'}: {a_file} is a file"),
        "summary": (["--summary-json", str(a_file / "s.json")], "--summary-json"),
        "cache": ([], "the map cache"),
        "device": (["--device", "cuda"], "no CUDA GPU is visible"),
    }[where]
    if where == "device" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["--data", str(tiny_mvtec), "--image-size", "64", "--no-mlflow", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (cache / "maps").exists()  # no detector was fitted


def test_missing_backbone_weights_fail_before_the_dataset_is_read(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no torchvision weights there
    for extra in (
        ["--backbone", "resnet18"],
        ["--set", "padim.backbone=resnet18"],
        ["--detectors", "patchcore,pfm", "--set", "pfm.target_backbone=resnet18"],
    ):
        args = ["--data", str(tmp_path / "no-such-data"), "--detectors", "patchcore,padim", "--no-mlflow"]
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert "backbone 'resnet18' needs torchvision's ImageNet weights" in err and "not a folder" not in err


def test_tiny_training_images_are_named_in_a_warning(tiny_mvtec: Path) -> None:
    import cv2

    tiny = sorted((tiny_mvtec / "widget" / "train" / "good").glob("*.png"))[0]
    cv2.imwrite(str(tiny), np.zeros((8, 8, 3), np.uint8))
    with pytest.warns(RuntimeWarning, match=rf"1 of 8 training images are smaller than 32 px.*{tiny.name} \(8x8\)"):
        assert main(["--data", str(tiny_mvtec), "--shots", "99", "--no-mlflow"]) == 2  # the warning comes first


@pytest.mark.parametrize(
    ("preset", "intensity", "segments", "start"),
    [
        ("brf", "none", "auto", "zero"),
        ("rf", "standardise", "kmeans:3", "zero"),
        ("bt", "clahe", "whole", "zero"),
        ("logreg", "clahe", "kmeans:3", "zero"),
        ("brf", "none", "whole", "ensemble"),
    ],
)
def test_the_saved_model_scores_what_the_run_reported(
    small_mvtec: Path, tmp_path: Path, preset: str, intensity: str, segments: str, start: str
) -> None:
    """Train, save, load, predict the first seed's test files: the run's scores to 1e-4, for every classifier
    preset and intensity mode (the model applies its own --intensity and float16 maps, as training did)."""
    from segad.pipeline import SegadPipeline
    from segad.train import parse_args, run

    cfg = parse_args(
        ["--data", str(small_mvtec), "--image-size", "96", "--shots", "5", "--seeds", "1", "--device", "cpu",
         "--detectors", "padim", "--classifier", preset,
         "--intensity", intensity, "--segments", segments, "--classifier-start", start, "--no-mlflow"]
    )  # fmt: skip
    result = run(cfg)
    # What the report needs to say why: an explanation per first-seed test image, every test image's segments.
    assert len(result.first_seed_explanations) == len(result.first_seed_test)
    assert result.test_segments.shape == (len(result.dataset_table.test), 96, 96)
    model = SegadPipeline.load(result.pipeline.save(tmp_path / "model"), device="cpu")
    test = [result.dataset_table.test[i] for i in result.first_seed_test]
    seg_paths = [s.segment_path for s in test] if segments == "auto" else None
    out = model.predict([s.image_path for s in test], seg_paths, explain=True)
    # 1e-4: a detector's float32 image scores move in the 7th digit with the batch and thread count (one
    # thread per xdist worker), and the z-scoring of the final score scales that up.
    np.testing.assert_allclose(out.scores, result.first_seed_scores["segad"], rtol=0, atol=1e-4)
    # The saved model explains its scores: the shares add up to each score, whatever the final score is.
    totals = [sum(r.value for r in e.reasons) + e.constant for e in out.explanations]
    np.testing.assert_allclose(totals, out.scores, rtol=0, atol=1e-6)
    # The classifier's own margins too (the final score may not use them): a forest started from the
    # ensemble needs the same ensemble score at deployment as in training.
    X, _, det_scores = model.features(model.preprocess([s.image_path for s in test]), seg_paths)
    prior = model.blend.ensemble_score(det_scores) if start == "ensemble" else None
    margins = model.classifier.decision_function(X, prior)
    np.testing.assert_allclose(margins, result.first_seed_scores["classifier"], rtol=0, atol=1e-4)
    dep = result.deployment
    assert dep.calibration.threshold == model.threshold and dep.n_good == 8
    assert dep.fpr == float((out.scores[[s.label == 0 for s in test]] >= model.threshold).mean())


@pytest.fixture
def two_torch_threads():
    """Two threads, as a user's run has: on one (an xdist worker's), oneDNN rounds a batch's last, partial
    chunk differently, so identical images score a few float32 ulps apart."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("two_torch_threads")
def test_a_model_that_learned_nothing_is_not_saved(small_mvtec: Path, tmp_path: Path, capsys) -> None:
    """Every image the same picture with the same components: every score is constant, so no threshold can
    mean anything. (Their own component maps would differ: a classifier can learn from those alone.)"""
    import cv2

    pictures = [p for p in small_mvtec.rglob("*.png") if "ground_truth" not in p.parts and "segments" not in p.parts]
    same = cv2.imread(str(pictures[0]))
    for p in pictures:
        cv2.imwrite(str(p), same)
    segments = [p for p in small_mvtec.rglob("*.png") if "segments" in p.parts]
    one = cv2.imread(str(segments[0]), cv2.IMREAD_UNCHANGED)
    for p in segments:
        cv2.imwrite(str(p), one)
    args = ["--data", str(small_mvtec), "--image-size", "96", "--shots", "2", "--seeds", "1", "--device", "cpu"]
    args += ["--no-mlflow", "--model-dir", str(tmp_path / "model")]
    assert main(args) == 2
    assert "the model learned nothing" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_only_input_errors_become_a_clean_exit(tiny_mvtec: Path, capsys, monkeypatch) -> None:
    """A bad option is a one-line message and exit 2; anything else is a bug and keeps its traceback."""
    assert main(["--data", str(tiny_mvtec), "--shots", "2", "--holdout", "1.5", "--no-mlflow"]) == 2
    assert "--holdout must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["--data", str(tiny_mvtec), "--shots", "2", "--classifier-params", "max_depth=x", "--no-mlflow"]) == 2
    assert "--classifier-params max_depth=x: x is not a number" in capsys.readouterr().err
    import xgboost

    def broken(*args, **kwargs):
        raise ValueError("an XGBoost internal error")

    monkeypatch.setattr(xgboost.XGBClassifier, "fit", broken)  # a library failing inside: not the user's input
    with pytest.raises(ValueError, match="an XGBoost internal error"):
        main(
            ["--data", str(tiny_mvtec), "--image-size", "64", "--detectors", "padim", "--shots", "2",
             "--holdout", "0.25", "--segments", "whole", "--no-mlflow"]
        )  # fmt: skip
