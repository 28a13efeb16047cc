from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors import make_detector
from features import KMeansConfig, KMeansSegments
from segad.classifier import SegadClassifier
from segad.data.shapes import SourceShape
from segad.pipeline import SegadPipeline
from tests.conftest import TinySet


@pytest.mark.parametrize("preset", ["rf", "logreg"])
def test_kmeans_pipeline_round_trips_through_its_folder(tiny: TinySet, tmp_path: Path, preset: str) -> None:
    det = make_detector("padim", progress=False, device="cpu").fit(tiny.train)
    seg = KMeansSegments(KMeansConfig(k=3, device="cpu", input_size=96)).fit(tiny.train)
    intensity = "clahe" if preset == "logreg" else "none"
    pipe = SegadPipeline(
        [det], seg, SegadClassifier(preset), (96, 96), threshold=0.5, with_scores=False, intensity=intensity
    )
    X, _, _ = pipe.features(np.concatenate([tiny.train, tiny.test]))
    y = np.r_[np.zeros(len(tiny.train)), tiny.labels]
    pipe.classifier.fit(X, y)
    before = pipe.predict_batch(tiny.test)
    loaded = SegadPipeline.load(pipe.save(tmp_path / "model"), device="cpu")
    after = loaded.predict_batch(tiny.test)
    assert np.array_equal(before.scores, after.scores) and np.array_equal(before.decisions, after.decisions)
    assert loaded.feature_names == pipe.feature_names and len(pipe.feature_names) == 3 * 4
    assert loaded.threshold == 0.5 and loaded.n_segments == 3 and loaded.intensity == intensity
    pipe.save(tmp_path / "model")  # overwriting an existing model folder works too
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_model_whose_final_score_is_the_ensemble_skips_the_segad_layer(tiny: TinySet, tmp_path: Path) -> None:
    """When training chose the ensemble, the saved model scores with the detectors alone: no segmenter
    (a folder segmenter without segment maps would fail), no forest."""
    from features import FolderSegments
    from segad.evaluate import good_moments
    from segad.selection import ScoreBlend, ensemble_score

    det = make_detector("padim", progress=False, device="cpu").fit(tiny.train)
    moments = {"padim": good_moments(det.predict(tiny.train).scores)}
    blend = ScoreBlend(0.0, "ensemble", moments, (0.0, 1.0))
    pipe = SegadPipeline([det], FolderSegments(3), SegadClassifier("brf"), (96, 96), blend=blend)
    rng = np.random.default_rng(0)
    pipe.classifier.fit(rng.normal(size=(20, len(pipe.feature_names))), np.r_[np.zeros(15), np.ones(5)])
    with pytest.raises(Exception, match="segment"):  # the SegAD layer would need the segment maps ...
        pipe.features(tiny.test)
    loaded = SegadPipeline.load(pipe.save(tmp_path / "model"), device="cpu")
    out = loaded.predict_batch(tiny.test)  # ... which the ensemble does not
    expected = ensemble_score({"padim": det.predict(tiny.test).scores}, moments)
    np.testing.assert_allclose(out.scores, expected, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def saved_two_detector_model(tiny: TinySet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dets = [
        make_detector("padim", progress=False, device="cpu").fit(tiny.train),
        make_detector("patchcore", progress=False, device="cpu", coreset_ratio=0.1).fit(tiny.train),
    ]
    seg = KMeansSegments(KMeansConfig(k=2, device="cpu", input_size=96)).fit(tiny.train)
    source = SourceShape.of([(96, 96), (96, 128)])
    pipe = SegadPipeline(dets, seg, SegadClassifier("rf"), (96, 96), threshold=0.5, source=source)
    X, _, _ = pipe.features(np.concatenate([tiny.train, tiny.test]))
    pipe.classifier.fit(X, np.r_[np.zeros(len(tiny.train)), tiny.labels])
    return pipe.save(tmp_path_factory.mktemp("tamper") / "model")


def _reorder(m: dict) -> None:
    m["detectors"].reverse()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_reorder, "do not give the features the classifier was trained on"),
        (lambda m: m.update(image_size="abc"), "'image_size' must be [height, width]"),
        (lambda m: m.update(intensity="evil"), "'intensity' must be one of"),
        (lambda m: m.pop("threshold"), "'threshold' is missing"),
        (lambda m: m.update(threshold=None), "'threshold' must be a finite number"),
        (lambda m: m["segments"]["config"].update(colour="red"), "k-means segments do not know: ['colour']"),
        (lambda m: m.update(format=99), "format 99; this segad reads format 1"),
        (lambda m: m.update(surprise=1), "'surprise' is not a manifest key"),
        (lambda m: m["classifier"].update(preset="magic"), "'classifier.preset' must be one of"),
        (lambda m: m["source_shape"].update(height=[0, 96]), "'source_shape' must hold height, width and aspect"),
        (lambda m: m.update(source_shape="96x96"), "'source_shape' must hold"),
    ],
    ids=[
        "reordered",
        "size",
        "intensity",
        "no-threshold",
        "null-threshold",
        "config",
        "format",
        "extra",
        "preset",
        "source-zero",
        "source-string",
    ],
)
def test_a_tampered_manifest_is_an_error_naming_the_file(
    saved_two_detector_model: Path, tmp_path: Path, edit, message: str
) -> None:
    import json
    import shutil

    from detectors.errors import InputError
    from segad.pipeline import MANIFEST

    model = shutil.copytree(saved_two_detector_model, tmp_path / "model")
    assert SegadPipeline.load(model, device="cpu").source == SourceShape((96, 96), (96, 128), (1.0, 4 / 3))  # untouched
    manifest = model / MANIFEST
    m = json.loads(manifest.read_text())
    edit(m)
    manifest.write_text(json.dumps(m))
    with pytest.raises(InputError) as err:
        SegadPipeline.load(model, device="cpu")
    assert str(manifest) in str(err.value) and message in str(err.value)


def test_a_manifest_that_is_not_json_names_the_file(saved_two_detector_model: Path, tmp_path: Path) -> None:
    import shutil

    from detectors.errors import InputError
    from segad.pipeline import MANIFEST

    model = shutil.copytree(saved_two_detector_model, tmp_path / "model")
    (model / MANIFEST).write_text('{"format": 1,')
    with pytest.raises(InputError, match="not a readable JSON manifest"):
        SegadPipeline.load(model, device="cpu")


@pytest.mark.parametrize("name", ["classifier.json", "segments.safetensors", "detector_padim.safetensors"])
def test_a_missing_model_file_is_named(saved_two_detector_model: Path, tmp_path: Path, name: str) -> None:
    import shutil

    from detectors.errors import InputError

    model = shutil.copytree(saved_two_detector_model, tmp_path / "model")
    (model / name).unlink()
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        SegadPipeline.load(model, device="cpu")
