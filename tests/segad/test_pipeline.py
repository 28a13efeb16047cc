from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors import make_detector
from features import KMeansConfig, KMeansSegments
from segad.classifier import SegadClassifier
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
