"""What size the training images were before resizing, so scoring can say when new images differ.

Every image is resized to the model's square input, so a camera change (another resolution, another
crop, another aspect) never fails: it silently changes the scale of defects relative to the patches
the detectors learned, and the scores with it. The training images' native sizes are kept in the
saved model; an image outside them gets a note beside its score instead of a silent shift.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segad.data.images import image_shape

TINY_SIDE = 32  # below the backbones' coarsest stride: the image is mostly interpolation once resized
SIZE_SLACK = 1.25  # a side this much larger or smaller than any training image's is another scale
ASPECT_SLACK = 1.05  # an aspect ratio 5% outside the training images' is another crop or sensor


@dataclass(frozen=True)
class SourceShape:
    """The range of (height, width, width/height) of the training images, as read from their files."""

    height: tuple[int, int]
    width: tuple[int, int]
    aspect: tuple[float, float]

    @classmethod
    def of(cls, shapes: Sequence[tuple[int, int]]) -> SourceShape:
        hs, ws = [h for h, _ in shapes], [w for _, w in shapes]
        aspects = [w / h for h, w in shapes]
        return cls((min(hs), max(hs)), (min(ws), max(ws)), (min(aspects), max(aspects)))

    def note(self, shape: tuple[int, int]) -> str:
        """Why an image of ``shape`` (height, width) is unlike the training images; "" when it is not."""
        h, w = shape
        lo_a, hi_a = self.aspect
        why = []
        if not lo_a / ASPECT_SLACK <= w / h <= hi_a * ASPECT_SLACK:
            why.append(f"aspect {w / h:.2f} (training {_span(lo_a, hi_a, '.2f')})")
        for side, value, (lo, hi) in (("height", h, self.height), ("width", w, self.width)):
            if not lo / SIZE_SLACK <= value <= hi * SIZE_SLACK:
                why.append(f"{side} {value} px (training {_span(lo, hi, 'd')})")
        if not why:
            return ""
        return (
            f"{w}x{h} differs from the training images in {', '.join(why)}: resizing it to the model's input "
            "changes the scale of defects, so its score may not compare with the threshold"
        )

    def to_dict(self) -> dict[str, list]:
        return {"height": list(self.height), "width": list(self.width), "aspect": list(self.aspect)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceShape:
        return cls(tuple(d["height"]), tuple(d["width"]), tuple(d["aspect"]))


def _span(lo: float, hi: float, fmt: str) -> str:
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def source_shapes(paths: Sequence[str | Path], what: str = "images") -> list[tuple[int, int]]:
    """Each file's (height, width) from its header; warns, naming them, about images under ``TINY_SIDE``."""
    shapes = [image_shape(p) for p in paths]
    tiny = [(p, s) for p, s in zip(paths, shapes, strict=True) if min(s) < TINY_SIDE]
    if tiny:
        examples = ", ".join(f"{p} ({s[1]}x{s[0]})" for p, s in tiny[:3])
        warnings.warn(
            f"{len(tiny)} of {len(paths)} {what} are smaller than {TINY_SIDE} px on a side, e.g. {examples}: "
            "upscaled to the model's input they carry almost no detail; check the files",
            RuntimeWarning,
            stacklevel=2,
        )
    return shapes
