from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from segad.data.samples import Sample, Split
from segad.mapfolder import GivenMaps, MapFolder, MapFolderError, match_files, parse_maps, read_map


def sample(split: str, kind: str, stem: str) -> Sample:
    return Sample(Path(f"/data/{split}/{kind}/{stem}.png"), int(kind != "good"), kind, Split(split))


SAMPLES = [sample("train", "good", "000"), sample("test", "good", "001"), sample("test", "crack", "002")]


def ramp(h: int, w: int, scale: float = 1.0) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) * scale / (h + w)).astype(np.float32)


def test_every_format_reads_as_one_float_map(tmp_path: Path) -> None:
    m = ramp(12, 16)
    np.save(tmp_path / "a.npy", m[None])  # a singleton channel axis is dropped
    cv2.imwrite(str(tmp_path / "b.tiff"), m)
    cv2.imwrite(str(tmp_path / "c.png"), (m * 1000).astype(np.uint16))
    assert np.array_equal(read_map(tmp_path / "a.npy"), m)
    assert np.array_equal(read_map(tmp_path / "b.tiff"), m)
    assert read_map(tmp_path / "c.png").dtype == np.float32
    np.testing.assert_allclose(read_map(tmp_path / "c.png"), np.floor(m * 1000), atol=1)


def test_mirror_layout_resizes_and_scores_by_the_maps_maximum(tmp_path: Path) -> None:
    for s, scale in zip(SAMPLES, (1, 2, 3), strict=True):
        target = tmp_path / str(s.split) / s.defect_type / f"{s.stem}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, ramp(32, 32, scale))
    folder = MapFolder.open("ext", tmp_path)
    assert folder.layout == "mirror" and folder.score_source == "map_max"
    out = folder.load(SAMPLES, (16, 16))
    assert out.maps.shape == (3, 16, 16)
    np.testing.assert_allclose(out.scores, [ramp(32, 32, k).max() for k in (1, 2, 3)])
    np.testing.assert_allclose(out.maps[2], cv2.resize(ramp(32, 32, 3), (16, 16), interpolation=cv2.INTER_AREA))
    # Given scores take precedence, keyed by the image's path under the dataset root.
    (tmp_path / "scores.csv").write_text("image,score\ntrain/good/000.png,0.5\ntest/good/001.png,1\ntest/crack/002,7\n")
    assert MapFolder.open("ext", tmp_path).load(SAMPLES, (16, 16)).scores.tolist() == [0.5, 1.0, 7.0]


def test_segad_layout_reads_the_official_csvs(tmp_path: Path) -> None:
    """The layout of abc-125/segad: df_training.csv / df_test.csv beside anomaly_maps/<type>/<stem>.npy."""
    base = tmp_path / "efficient_ad" / "widget"
    for s, k in zip(SAMPLES, (1, 2, 3), strict=True):
        (base / "anomaly_maps" / s.defect_type).mkdir(parents=True, exist_ok=True)
        np.save(base / "anomaly_maps" / s.defect_type / f"{s.stem}.npy", ramp(8, 8, k))
    for name, rows in (("df_training.csv", SAMPLES[:1]), ("df_test.csv", SAMPLES[1:])):
        with (base / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "filepath", "an_map_path", "label", "prediction_an_det"])
            for i, s in enumerate(rows):
                # an_map_path as the official code writes it: relative to where it ran, here not resolvable
                where = f"./data/out/widget/anomaly_maps/{s.defect_type}/{s.stem}.npy"
                w.writerow([i, f"/visa/widget/{s.split}/{s.defect_type}/{s.stem}.JPG", where, s.label, 10 + i])
    folder = MapFolder.open("efficientad", tmp_path / "efficient_ad", category="widget")
    assert folder.layout == "segad" and folder.score_source == "given"
    out = folder.load(SAMPLES, (8, 8))
    assert out.scores.tolist() == [10, 10, 11]
    assert np.array_equal(out.maps[2], ramp(8, 8, 3))
    assert len(folder.covers([*SAMPLES, sample("train", "good", "999")])) == 3


def test_every_bad_map_is_named_in_one_error(tmp_path: Path) -> None:
    root = tmp_path / "maps"
    (root / "train" / "good").mkdir(parents=True)
    (root / "test" / "good").mkdir(parents=True)
    np.save(root / "train" / "good" / "000.npy", np.full((4, 4), np.nan, np.float32))
    np.save(root / "test" / "good" / "001.npy", np.zeros((2, 4, 4), np.float32))
    bad = [*SAMPLES, sample("test", "crack", "003")]
    (root / "test" / "crack").mkdir(parents=True)
    (root / "test" / "crack" / "003.png").write_bytes(b"not a png")
    with pytest.raises(MapFolderError) as e:
        MapFolder.open("ext", root).load(bad, (4, 4))
    text = str(e.value)
    assert "4 of 4 images" in text
    assert "000.npy: the map has NaN" in text and "shape (2, 4, 4)" in text
    assert "002.png: no map" in text and "003.png: cannot read it" in text


def test_given_maps_need_their_scores_when_training_had_them(tmp_path: Path) -> None:
    m = ramp(8, 8)
    given = GivenMaps("ext", (4, 4), "given")
    with pytest.raises(Exception, match="ext_score"):
        given.predict([m])
    out = given.predict([m], [3.0])
    assert out.scores.tolist() == [3.0] and out.maps.shape == (1, 4, 4)
    assert GivenMaps("ext", (4, 4)).predict([m]).scores.tolist() == [m.max()]


def test_files_match_by_path_then_by_name(tmp_path: Path) -> None:
    images = tmp_path / "images"
    maps = tmp_path / "maps"
    (maps / "line1").mkdir(parents=True)
    np.save(maps / "line1" / "a.npy", ramp(4, 4))
    np.save(maps / "b.npy", ramp(4, 4))
    files, scores = match_files(maps, [images / "line1" / "a.png", images / "line2" / "b.png"], images)
    assert files == [maps / "line1" / "a.npy", maps / "b.npy"] and scores is None
    with pytest.raises(MapFolderError, match=r"1 images:\n  .*c\.png"):
        match_files(maps, [images / "c.png"], images)


@pytest.mark.parametrize(
    ("text", "message"),
    [("ext", "use NAME=DIR"), ("=dir", "use NAME=DIR"), ("a=x,a=y", "given twice")],
)
def test_bad_maps_options_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        parse_maps(text)
