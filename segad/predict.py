"""``python -m segad.predict``: score a folder of images with a trained or registered model.

    python -m segad.predict --model outputs/models/elpv_mono --images new_cells/ --out results/
    python -m segad.predict --model models:/segad-elpv-mono/1 --images new_cells/ --out results/

Writes ``scores.csv`` (file, score, decision, error, warning, reasons: the three largest shares of the
score towards "defect", per detector and segment, segad.explain) and one overlay PNG per image (the
image, the segment that drove the score outlined, beside each detector's anomaly map). A file that
cannot be read is reported in the CSV and skipped; an image whose native size or aspect is unlike the
training images' is scored, with a warning beside it. ``--suggest N`` also writes ``suggest.csv``: the
N images to label next (segad.suggest).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from detectors.errors import InputError
from segad.data.images import resize
from segad.data.samples import IMAGE_SUFFIXES
from segad.mapfolder import match_files, parse_maps
from segad.overlay import map_scale, outline, overlay
from segad.pipeline import SegadPipeline
from segad.selection import z_score
from segad.suggest import suggest

# models:/ and runs:/ go through the tracking store (--tracking-uri); the others are artifact stores
# holding a logged model folder (what mlflow.artifacts.download_artifacts reads).
URI_SCHEMES = ("models", "runs", "file", "s3", "gs", "wasbs", "hdfs", "mlflow-artifacts")


def load_model(model: str, device: str = "auto") -> SegadPipeline:
    """A saved pipeline folder, or an MLflow model URI (``models:/name/version``, ``runs:/id/model``)."""
    path = Path(model)
    if path.is_dir():
        return SegadPipeline.load(path, device)
    scheme = model.partition(":/")[0] if ":/" in model else ""
    if scheme not in URI_SCHEMES:
        raise InputError(
            f"--model {model}: no such folder, and not a model URI (models:/NAME/VERSION or runs:/RUN_ID/model); "
            "for a model on a tracking server give --tracking-uri URL with --model models:/NAME/VERSION"
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(f"{model.rstrip('/')}/artifacts/pipeline"))
    except MlflowException as e:
        raise InputError(
            f"--model {model}: MLflow cannot find it ({e.message}); check the name, version and store"
        ) from e
    except Exception as e:  # a store's client library or connection: say which, not a trace from its depths
        raise InputError(
            f"--model {model}: cannot download it ({type(e).__name__}: {e}); check the URI and store"
        ) from e
    return SegadPipeline.load(local, device)


def given_maps(model: SegadPipeline, maps: Mapping[str, Path], files: Sequence[Path], root: Path) -> dict:
    """Each image's map (and score) for every input the model stacks from maps computed elsewhere."""
    if extra := sorted(set(maps) - set(model.given_maps)):
        known = ", ".join(model.given_maps) or "none"
        raise InputError(f"--maps {extra[0]}: the model has no input {extra[0]!r} computed elsewhere ({known})")
    if missing := [n for n in model.given_maps if n not in maps]:
        raise InputError(
            f"this model stacks maps computed elsewhere ({', '.join(model.given_maps)}): give them with "
            f"--maps {missing[0]}=DIR (each image's map at its path under --images, or by its file name)"
        )
    out = {}
    for name, folder in maps.items():
        map_files, scores = match_files(folder, files, root)
        by_file = dict(zip(files, map_files, strict=True))
        out[name] = by_file, None if scores is None else dict(zip(files, scores, strict=True))
    return out


def predict_folder(
    model: SegadPipeline,
    images: Path,
    out: Path,
    batch: int = 16,
    maps: Mapping[str, Path] | None = None,
    n_suggest: int = 0,
) -> list[dict]:
    files = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--images {images}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    given_by_file = given_maps(model, maps or {}, files, images)  # every missing map named before any scoring
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    scored: list[tuple[str, float, str]] = []  # for --suggest: file, score, driver
    z_batches: list[dict[str, np.ndarray]] = []  # and each batch's detector z-scores
    moments = model.blend.detector_moments  # each detector's (mean, std) on held-out good images
    scales = model.map_scales
    for s in range(0, len(files), batch):
        chunk, read = [], []
        for p in files[s : s + batch]:
            try:
                read.append(model.read(p))
            except (InputError, OSError) as e:
                print(f"skipped {p}: {e}", file=sys.stderr)
                rows.append(
                    {"file": str(p), "score": "", "decision": "", "error": str(e), "warning": "", "reasons": ""}
                )
                continue
            chunk.append(p)
        if not chunk:
            continue
        given = {
            n: ([m[p] for p in chunk], None if sc is None else [sc[p] for p in chunk])
            for n, (m, sc) in given_by_file.items()
        }
        arrays = np.stack([r.array for r in read])
        result = model.predict_batch(arrays, names=[str(p) for p in chunk], given=given, explain=True)
        if missing := [n for n in result.maps if n not in scales]:  # a model saved before scales were kept
            print(
                f"note: the model keeps no overlay scale for {', '.join(missing)}; their overlays are scaled to "
                "this first batch's maps",
                file=sys.stderr,
            )
            scales.update({n: map_scale(result.maps[n], 0.05) for n in missing})
        z_batches.append({d: z_score(v, *moments[d]) for d, v in result.detector_scores.items() if d in moments})
        for j, p in enumerate(chunk):
            score, decision = float(result.scores[j]), bool(result.decisions[j])
            why = result.explanations[j]
            reasons = "; ".join(str(r) for r in why.top(3))
            first = why.top(1)
            scored.append((str(p), score, first[0].part if first else ""))
            row = {"file": str(p), "score": score, "decision": decision, "error": "", "warning": read[j].note}
            rows.append({**row, "reasons": reasons})
            img = resize(read[j].rgb, model.image_size)
            if (driver := why.top_segment) is not None:  # outline the segment that pushed most towards "defect"
                img = outline(img, result.segments[j] == driver.segment)
            panels = [img] + [overlay(img, m[j], scales[name]) for name, m in result.maps.items()]
            rel = p.relative_to(images).with_suffix(".png")
            target = out / "overlays" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), (np.concatenate(panels, axis=1)[..., ::-1] * 255).astype(np.uint8))
    rows.sort(key=lambda r: r["file"])
    if unlike := [r for r in rows if r["warning"]]:
        print(
            f"warning: {len(unlike)} of {len(rows)} images are unlike the training images in size or aspect "
            f"(the 'warning' column of scores.csv), e.g. {unlike[0]['file']}: {unlike[0]['warning']}",
            file=sys.stderr,
        )
    if n_suggest:
        z = {d: np.concatenate([b[d] for b in z_batches]) for d in (z_batches[0] if z_batches else {})}
        write_suggestions(scored, z, model.threshold, n_suggest, out / "suggest.csv")
    with (out / "scores.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "score", "decision", "error", "warning", "reasons"])
        w.writeheader()
        w.writerows(rows)
    return rows


def write_suggestions(
    scored: Sequence[tuple[str, float, str]], z: dict[str, np.ndarray], threshold: float, n: int, path: Path
) -> Path:
    """``suggest.csv``: the images to label next, in order (segad.suggest); ``z``: the scored images'
    detector z-scores, in ``scored``'s order."""
    if not scored:
        raise InputError("--suggest: no image could be scored")
    files, scores, drivers = zip(*scored, strict=True)
    picks = suggest(np.array(scores), threshold, z, list(drivers), n)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "file", "score", "threshold", "distance", "disagreement", "driver"])
        for rank, s in enumerate(picks, start=1):
            w.writerow([rank, files[s.index], scores[s.index], threshold, s.distance, s.disagreement, s.driver])
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m segad.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True, help="saved model folder, models:/NAME/VERSION or runs:/ID/model")
    ap.add_argument("--images", required=True, type=Path, help="folder of images to score (searched recursively)")
    ap.add_argument("--out", required=True, type=Path, help="where scores.csv and overlays/ go")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--tracking-uri", help="MLflow store holding the model (default: MLflow's own)")
    ap.add_argument(
        "--maps",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="for a model that stacks maps computed elsewhere: each image's map of input NAME, at its path "
        "under --images in DIR (or by file name), .npy|.tiff|.png, with DIR/scores.csv if it was trained on scores",
    )
    ap.add_argument(
        "--suggest",
        type=int,
        default=0,
        metavar="N",
        help="also write suggest.csv: the N images whose labels would teach the model most (near the "
        "threshold, detectors disagreeing, spread over segments)",
    )
    a = ap.parse_args(argv)
    if a.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(a.tracking_uri)
    try:
        model = load_model(a.model, a.device)
        if model.segmenter.__class__.__name__ == "FolderSegments":
            raise InputError("this model's segments are user-provided label maps; score it from Python with them")
        if a.suggest < 0:
            raise InputError(f"--suggest must be >= 0, got {a.suggest}")
        rows = predict_folder(model, a.images, a.out, maps=parse_maps(",".join(a.maps)), n_suggest=a.suggest)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    flagged = sum(1 for r in rows if r["decision"] is True)
    failed = sum(1 for r in rows if r["error"])
    print(f"{len(rows)} images: {flagged} flagged as defective, {failed} unreadable; see {a.out / 'scores.csv'}")
    if a.suggest:
        print(f"the {a.suggest} to label next: {a.out / 'suggest.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
