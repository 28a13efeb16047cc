"""A complex product whose components vary harmlessly, with small defects elsewhere: ``synthetic/complex``.

SegAD's case (Baitieva et al., CVPR 2024): on a product made of several components, some of them
differ on every good part (a printed serial number, a loose cable, dust), so a one-class detector's
highest score on a good part often comes from them and its image score cannot tell that variation
from a small real defect on another component. Per-segment statistics can: a classifier learns which
component's statistics to trust.

Each image (``image_size`` px, 128 by default) shows a circuit board on a light work table:

- ``body``: the green board, with copper traces and two mounting holes (the same on every part);
- ``chip``: a black package with a pin-1 dot;
- ``pins``: a row of six gold header pins;
- ``connector``: a beige socket on the board's right edge;
- ``label``: a white sticker printed with a serial number, a lot number and the serial as a 2D code
  (a Data Matrix look-alike), all random on every part; the sticker sits within a pixel or two of
  its place and the print has its own pixel or two of registration play;
- ``cable``: a black cable plugged into the connector, whose loose end lies on the table along a random
  smooth path (a cubic Bezier curve, always leaving the socket straight) to the right or bottom image
  border, with a yellow marker sleeve somewhere along it;
- dust: 0-15 specks (1-3 px) and short fibres on the table, and on about a third of the parts an
  offcut (a white cable-tie tail or a dark wire end); all part of ``background``.

The board shifts by up to 3 px each way (the fixture's play) and the lighting gain by up to 4%
between parts; sensor noise is added last. Good and defective parts draw all of this in the same way
from the same kind of generator, and a defect changes only the pixels under its mask: nothing global
tells them apart.

Defects (each with its pixel mask, under 1% of the image; none touches the label, the cable or the table):

- ``body_scratch``: a thin light line (1 px wide, 5-22 px long at 128) through the board's solder mask;
- ``chip_crack``: a thin dark-grey crack across the chip;
- ``chip_contamination``: a small (2-4 px) dull brown residue blob on the chip;
- ``bent_pin``: one pin bent sideways by 8-16 degrees about its root;
- ``missing_pin``: one pin absent, its plated hole showing;
- ``connector_damage``: a corner of the connector broken off.

The component map (``segments/``, labels ``COMPLEX_COMPONENTS``) is what a CAD overlay plus a cable
detector would give: the nominal board, the label sticker where it is, and every pixel the cable
touches in that image; a defect does not change it (a missing pin's place is still ``pins``).

Measured with ``python experiments/bench_complex.py`` (default spec, 256 px): PatchCore image AUROC
0.63, PaDiM 0.75; 97-100% of the test good images have their map's maximum on the table, the label or
the cable, while the 0.995 quantiles of the other components alone reach 0.84 / 0.98.

Every image is a pure function of the spec's seed, its split, type and index: the product and its
benign variation come from one generator, sensor noise from a second and the defect from a third, so
a defective image equals its clean counterpart (``ComplexImage.clean``) outside the mask.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detectors.errors import InputError
from segad.data.mvtec import generated_set, load_mvtec, spec_key, write_samples
from segad.data.samples import GOOD, Dataset, Split

COMPLEX_CATEGORY = "complex"
COMPLEX_COMPONENTS = ("background", "body", "chip", "pins", "connector", "label", "cable")
BENIGN_COMPONENTS = ("background", "label", "cable")  # vary on every good part; defects never sit there
COMPLEX_DEFECT_TYPES = (
    "body_scratch",
    "chip_crack",
    "chip_contamination",
    "bent_pin",
    "missing_pin",
    "connector_damage",
)
GENERATOR_VERSION = 1  # part of the cache folder's name: raise it when the pixels of a spec change

BACKGROUND, BODY, CHIP, PINS, CONNECTOR, LABEL, CABLE = range(len(COMPLEX_COMPONENTS))

_COLOURS = {  # RGB
    BACKGROUND: (168, 168, 172),
    BODY: (40, 112, 62),
    CHIP: (32, 32, 38),
    PINS: (212, 176, 84),
    CONNECTOR: (214, 204, 176),
    LABEL: (236, 236, 230),
    CABLE: (28, 28, 32),
}
_TRACE = (150, 120, 60)  # copper traces under the solder mask (part of the body)
_SLOT = (70, 66, 58)  # the connector's socket opening (part of the connector)
_INK = (30, 30, 34)  # label print
_HOLE = (60, 60, 60)  # mounting holes and a missing pin's plated hole
_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class ComplexSpec:
    image_size: int = 128
    n_train: int = 200
    n_test_good: int = 60
    n_defects_per_type: int = 11
    seed: int = 0

    def key(self) -> str:
        return spec_key(self)

    def check(self) -> None:
        if self.image_size < 64:
            raise InputError(f"ComplexSpec.image_size must be at least 64, got {self.image_size}")
        if self.n_train < 1 or self.n_test_good < 0 or self.n_defects_per_type < 0:
            raise InputError("ComplexSpec needs n_train >= 1 and non-negative test counts")


@dataclass(frozen=True)
class ComplexImage:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool, all False for good images
    components: np.ndarray  # (H, W) uint8 labels, COMPLEX_COMPONENTS
    clean: np.ndarray  # (H, W, 3) uint8: the same part without its defect (equal to image for good ones)
    defect_type: str
    split: Split


Box = tuple[int, int, int, int]  # x0, y0, x1, y1, inclusive


@dataclass(frozen=True)
class _Part:
    """One part's geometry and benign variation."""

    s: int
    body: Box
    chip: Box
    pins: tuple[Box, ...]
    connector: Box
    slot: Box
    label: Box
    text: tuple[str, str]
    text_origin: tuple[int, int]
    code: np.ndarray  # (n, n) bool modules of the label's 2D code (a Data Matrix look-alike)
    code_origin: tuple[int, int]
    module: int  # px per module
    cable: np.ndarray  # (n, 2) int32 points of the cable's centre line
    sleeve: np.ndarray  # (m, 2) int32: the part of the centre line the marker sleeve covers
    cable_width: int
    dust: tuple[tuple[str, tuple[int, ...], int], ...]  # (kind, geometry, grey level)
    gain: float


def _px(s: int, v: float) -> int:
    return round(v * s)


def _bezier(p: np.ndarray, n: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


def _part(rng: np.random.Generator, s: int) -> _Part:
    j = max(1, s // 64)  # label placement and print registration play
    shift = max(1, round(3 * s / 128))  # where the fixture holds the board
    jx, jy = (int(v) for v in rng.integers(-shift, shift + 1, size=2))

    def box(x0: float, y0: float, x1: float, y1: float, dx: int = 0, dy: int = 0) -> Box:
        return (_px(s, x0) + jx + dx, _px(s, y0) + jy + dy, _px(s, x1) + jx + dx, _px(s, y1) + jy + dy)

    body = box(0.05, 0.06, 0.64, 0.94)
    chip = box(0.13, 0.13, 0.36, 0.36)
    pins = tuple(box(0.11 + 0.085 * i, 0.46, 0.14 + 0.085 * i, 0.555) for i in range(6))
    connector = box(0.46, 0.14, 0.68, 0.34)
    slot = box(0.50, 0.20, 0.62, 0.28)
    # The sticker is placed by hand: a pixel of play; the printer adds its own registration jitter.
    lx, ly = (int(v) for v in rng.integers(-j, j + 1, size=2))
    label = box(0.09, 0.64, 0.60, 0.86, lx, ly)
    text = (
        "SN" + "".join(rng.choice(list(_ALPHABET), size=6)),
        "LOT " + "".join(rng.choice(list(string.digits), size=4)),
    )
    tx, ty = (int(v) for v in rng.integers(-j, j + 1, size=2))
    text_origin = (label[0] + _px(s, 0.02) + tx, label[1] + _px(s, 0.085) + ty)
    # The serial number again as a 2D code: solid finder "L" on the left and bottom, alternating
    # timing modules on the top and right, data inside (random here, as the serial is).
    n, module = 8, max(1, round(s / 64))
    code = rng.random((n, n)) < 0.5
    code[:, 0] = code[-1, :] = True
    code[0, :] = np.arange(n) % 2 == 0
    code[:, -1] = np.arange(n) % 2 == 1
    code[-1, :] = True
    code_origin = (label[2] - _px(s, 0.025) - n * module + tx, (label[1] + label[3] + 1 - n * module) // 2 + ty)

    # The cable leaves the socket straight to the right, then lies loose on the table to the image border.
    x_min = connector[2] + 1
    p0 = np.array([x_min, (connector[1] + connector[3]) / 2], float)
    p1 = p0 + np.array([rng.uniform(0.08, 0.25) * s, 0.0])
    if rng.random() < 0.5:  # out through the right edge
        p3 = np.array([s + 0.05 * s, rng.uniform(0.05, 0.97) * s])
    else:  # the bottom edge
        p3 = np.array([rng.uniform(0.72, 0.97) * s, s + 0.05 * s])
    p2 = np.array([rng.uniform(0.70, 1.05) * s, rng.uniform(0.0, 1.05) * s])
    pts = _bezier(np.stack([p0, p1, p2, p3]))
    pts[:, 0] = np.maximum(pts[:, 0], x_min)  # the control points' hull keeps it off the board anyway
    cable = np.round(pts).astype(np.int32)
    # A marker sleeve slid onto the cable, wherever it ended up.
    i0 = int(rng.integers(int(0.3 * len(cable)), int(0.8 * len(cable))))
    sleeve = cable[i0 : i0 + 4]

    dust = []
    for _ in range(int(rng.integers(0, 16))):
        grey = int(rng.integers(40, 100))
        x, y = (int(v) for v in rng.integers(0, s, size=2))
        if rng.random() < 0.7:  # a speck
            dust.append(("speck", (x, y, int(rng.integers(1, max(2, s // 40) + 1))), grey))
        else:  # a short fibre
            ang = rng.uniform(0, np.pi)
            half = rng.uniform(0.02, 0.08) * s
            dx, dy = round(half * np.cos(ang)), round(half * np.sin(ang))
            width = int(rng.integers(1, max(1, s // 64) + 1))
            dust.append(("fibre", (x - dx, y - dy, x + dx, y + dy, width), grey))
    if rng.random() < 0.35:  # now and then an offcut: a clipped cable-tie tail (white) or wire end (dark)
        x, y = (int(v) for v in rng.integers(0, s, size=2))
        ang = rng.uniform(0, np.pi)
        half = rng.uniform(0.025, 0.045) * s
        dx, dy = round(half * np.cos(ang)), round(half * np.sin(ang))
        grey = int(rng.integers(215, 240)) if rng.random() < 0.5 else int(rng.integers(30, 50))
        dust.append(("fibre", (x - dx, y - dy, x + dx, y + dy, max(2, s // 64)), grey))
    return _Part(
        s,
        body,
        chip,
        pins,
        connector,
        slot,
        label,
        text,
        text_origin,
        code,
        code_origin,
        module,
        cable,
        sleeve,
        max(3, _px(s, 0.035) | 1),
        tuple(dust),
        float(rng.uniform(0.96, 1.04)),
    )


def _rect(img: np.ndarray, b: Box, value) -> None:
    cv2.rectangle(img, (b[0], b[1]), (b[2], b[3]), value, -1)


def components(part: _Part) -> np.ndarray:
    """(s, s) uint8 component labels of the part as built (before any defect)."""
    s = part.s
    comp = np.zeros((s, s), np.uint8)
    _rect(comp, part.body, BODY)
    _rect(comp, part.chip, CHIP)
    for b in part.pins:
        _rect(comp, b, PINS)
    _rect(comp, part.connector, CONNECTOR)
    _rect(comp, part.label, LABEL)
    # Every pixel the cable touches, its anti-aliased rim included.
    cable = np.zeros((s, s), np.uint8)
    cv2.polylines(cable, [part.cable], False, 255, part.cable_width, cv2.LINE_AA)
    cv2.polylines(cable, [part.sleeve], False, 255, part.cable_width + 2)
    comp[cable > 0] = CABLE
    _rect(comp, part.connector, CONNECTOR)  # the cable's end disappears into the socket
    return comp


def paint(part: _Part) -> np.ndarray:
    """(s, s, 3) float32 RGB of the clean part, before gain and noise."""
    s = part.s
    comp = components(part)
    img = np.zeros((s, s, 3), np.uint8)  # drawn in 8 bits (OpenCV's text needs them), blended in float
    for k, colour in _COLOURS.items():
        img[comp == k] = colour
    # Body details, the same on every part: traces from the chip to the pins and the connector, holes.
    w = max(1, s // 96)
    cy = (part.chip[1] + part.chip[3]) // 2
    for b in part.pins[:3]:
        mid = (b[0] + b[2]) // 2
        cv2.line(img, (mid, part.chip[3] + 2), (mid, b[1] - 2), _TRACE, w)
    for dy in (-3, 3):
        cv2.line(img, (part.chip[2] + 2, cy + dy), (part.connector[0] - 2, cy + dy), _TRACE, w)
    for hx, hy in (
        (part.body[0] + _px(s, 0.04), part.body[1] + _px(s, 0.03)),
        (part.body[2] - _px(s, 0.04), part.body[3] - _px(s, 0.03)),
    ):
        cv2.circle(img, (hx, hy), max(2, s // 48), _HOLE, -1)
    cv2.circle(img, (part.chip[0] + _px(s, 0.03), part.chip[1] + _px(s, 0.03)), max(1, s // 96), (150,) * 3, -1)
    _rect(img, part.slot, _SLOT)
    # The label's print.
    scale = 0.3 * s / 128
    x, y = part.text_origin
    cv2.putText(img, part.text[0], (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, _INK, 1, cv2.LINE_AA)
    cv2.putText(img, part.text[1], (x, y + _px(s, 0.09)), cv2.FONT_HERSHEY_SIMPLEX, scale, _INK, 1, cv2.LINE_AA)
    x, y = part.code_origin
    for r, c in zip(*np.nonzero(part.code), strict=True):
        m = part.module
        img[y + r * m : y + (r + 1) * m, x + c * m : x + (c + 1) * m] = _INK
    # The cable: dark insulation with a faint highlight along its top.
    cv2.polylines(img, [part.cable], False, _COLOURS[CABLE], part.cable_width, cv2.LINE_AA)
    cv2.polylines(
        img,
        [(part.cable - [0, part.cable_width // 3]).astype(np.int32)],
        False,
        (70, 70, 76),
        max(1, s // 128),
        cv2.LINE_AA,
    )
    cv2.polylines(img, [part.sleeve], False, (225, 205, 70), part.cable_width + 2)
    _rect(img, part.connector, _COLOURS[CONNECTOR])  # over the cable's end, as in components()
    _rect(img, part.slot, _SLOT)
    # Dust on the table only (a speck or fibre under the cable or on the board is not drawn).
    img = img.astype(np.float32)
    table = (comp == BACKGROUND).astype(np.float32)
    for kind, geo, grey in part.dust:
        cover = np.zeros((s, s), np.uint8)
        if kind == "speck":
            cv2.circle(cover, geo[:2], geo[2], 255, -1, cv2.LINE_AA)
        else:
            cv2.line(cover, geo[:2], geo[2:4], 255, geo[4], cv2.LINE_AA)
        a = (cover.astype(np.float32) / 255 * table)[:, :, None]
        img = (1 - a) * img + a * np.float32(grey)
    return img


def _finish(img: np.ndarray, gain: float, noise: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * gain + noise), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------- defects


def _line_mask(s: int, p0, p1, width: int) -> np.ndarray:
    m = np.zeros((s, s), np.uint8)
    cv2.line(m, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1, width)
    return m.astype(bool)


def _free_point(region: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[int, int]:
    """A point of ``region`` at least ``margin`` px inside it."""
    inner = cv2.erode(region.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
    ys, xs = np.nonzero(inner if inner.any() else region)
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


def _plant(kind: str, img: np.ndarray, part: _Part, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(float image, bool mask) of a ``kind`` defect planted on the clean painted part ``img``."""
    s = part.s
    comp = components(part)
    out = img.copy()
    if kind == "body_scratch":
        # Away from the other components and the sticker, so it reads as a scratch in the solder mask.
        free = cv2.erode((comp == BODY).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        cx, cy = _free_point(free, rng, 2)
        ang = rng.uniform(0, np.pi)
        half = rng.uniform(0.05, 0.09) * s
        d = half * np.array([np.cos(ang), np.sin(ang)])
        c = np.array([cx, cy], float)
        mask = _line_mask(s, c - d, c + d, max(1, s // 128)) & free
        out[mask] = np.array([120, 175, 130], np.float32) * rng.uniform(0.9, 1.1)
    elif kind == "chip_crack":
        cx, cy = _free_point(comp == CHIP, rng, max(3, s // 20))
        ang = rng.uniform(0, np.pi)
        arms = []
        for a in (ang + np.pi, ang):  # two arms from the centre, each bending a little
            p, arm = np.array([cx, cy], float), []
            for _ in range(2):
                a += rng.normal(0, 0.4)
                p = p + rng.uniform(0.015, 0.03) * s * np.array([np.cos(a), np.sin(a)])
                arm.append(p)
            arms.append(arm)
        pts = [*arms[0][::-1], np.array([cx, cy], float), *arms[1]]
        m = np.zeros((s, s), np.uint8)
        cv2.polylines(m, [np.round(np.array(pts)).astype(np.int32)], False, 1, max(1, s // 128))
        mask = m.astype(bool) & (comp == CHIP)
        out[mask] = rng.uniform(55, 75)
    elif kind == "chip_contamination":
        cx, cy = _free_point(comp == CHIP, rng, max(3, s // 20))
        axes = tuple(int(v) for v in rng.integers(max(1, s // 96), max(2, s // 64) + 1, size=2))
        m = np.zeros((s, s), np.uint8)
        cv2.ellipse(m, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        mask = m.astype(bool) & (comp == CHIP)
        colour = np.array([64, 56, 44], np.float32) * rng.uniform(0.85, 1.15)
        out[mask] = colour + rng.normal(0, 5, size=(int(mask.sum()), 3))
    elif kind == "bent_pin":
        i = int(rng.integers(len(part.pins)))
        x0, y0, x1, y1 = part.pins[i]
        ang = np.deg2rad(rng.uniform(8, 16) * rng.choice([-1.0, 1.0]))
        # The pin pivots about its root (the top, where it leaves the header).
        pivot = np.array([(x0 + x1) / 2, y0], float)
        corners = np.array([[x0, y0], [x1 + 1, y0], [x1 + 1, y1 + 1], [x0, y1 + 1]], float) - pivot
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        bent = np.zeros((s, s), np.uint8)
        cv2.fillPoly(bent, [np.round(corners @ rot.T + pivot).astype(np.int32)], 1)
        own = np.zeros((s, s), bool)
        own[y0 : y1 + 1, x0 : x1 + 1] = True
        others = (comp == PINS) & ~own
        new = bent.astype(bool) & ~others
        out[own & ~new] = _COLOURS[BODY]  # the board shows where the pin stood
        out[new] = _COLOURS[PINS]
        out[new & ~own] *= 0.9  # the bent part catches less light
        mask = (own & ~new) | (new & ~own)
    elif kind == "missing_pin":
        i = int(rng.integers(len(part.pins)))
        x0, y0, x1, y1 = part.pins[i]
        mask = np.zeros((s, s), bool)
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
        out[mask] = _COLOURS[BODY]
        cv2.circle(out, ((x0 + x1) // 2, (y0 + y1) // 2), max(1, (x1 - x0) // 2), _HOLE, -1)
        out[~mask] = img[~mask]
    elif kind == "connector_damage":
        x0, y0, x1, y1 = part.connector
        leg = int(rng.integers(max(3, s // 32), max(4, s // 18) + 1))
        corner = int(rng.integers(4))
        cx, cy = (x0, x1, x1, x0)[corner], (y0, y0, y1, y1)[corner]
        sx, sy = (1, -1, -1, 1)[corner], (1, 1, -1, -1)[corner]
        legs = rng.uniform(0.7, 1.3, size=2) * leg
        tri = np.array([[cx, cy], [cx + sx * legs[0], cy], [cx, cy + sy * legs[1]]])
        m = np.zeros((s, s), np.uint8)
        cv2.fillPoly(m, [np.round(tri).astype(np.int32)], 1)
        mask = m.astype(bool) & (comp == CONNECTOR)
        out[mask] = np.array([150, 138, 112], np.float32) + rng.normal(0, 8, size=(int(mask.sum()), 3))
    else:
        raise InputError(f"unknown complex defect type {kind!r}; choose from {COMPLEX_DEFECT_TYPES}")
    return out, mask


# ------------------------------------------------------------------------------------------ the set


def _streams(spec: ComplexSpec, index: int, defect_type: str, split: Split) -> list[int]:
    split = Split(split)
    if split == Split.TRAIN and defect_type != GOOD:
        raise InputError(f"the train split holds good images only, not {defect_type!r}")
    if defect_type != GOOD and defect_type not in COMPLEX_DEFECT_TYPES:
        raise InputError(f"unknown complex defect type {defect_type!r}; choose from {COMPLEX_DEFECT_TYPES}")
    type_id = 0 if defect_type == GOOD else 1 + COMPLEX_DEFECT_TYPES.index(defect_type)
    return [spec.seed, 0 if split == Split.TRAIN else 1, type_id, index]


def part_of(spec: ComplexSpec, index: int, defect_type: str = GOOD, split: Split = Split.TEST) -> _Part:
    """The geometry and benign variation of image ``index`` of a (split, type)."""
    return _part(np.random.default_rng([*_streams(spec, index, defect_type, split), 0]), spec.image_size)


def render(spec: ComplexSpec, index: int, defect_type: str = GOOD, split: Split = Split.TEST) -> ComplexImage:
    """Image number ``index`` of a (split, type); the same arguments always give the same pixels."""
    key = _streams(spec, index, defect_type, split)
    s = spec.image_size
    part = part_of(spec, index, defect_type, split)
    noise = np.random.default_rng([*key, 1]).normal(0.0, 3.0, size=(s, s, 3)).astype(np.float32)
    img = paint(part)
    clean = _finish(img, part.gain, noise)
    if defect_type == GOOD:
        return ComplexImage(clean, np.zeros((s, s), bool), components(part), clean, GOOD, Split(split))
    bad, mask = _plant(defect_type, img, part, np.random.default_rng([*key, 2]))
    return ComplexImage(_finish(bad, part.gain, noise), mask, components(part), clean, defect_type, Split(split))


def generate(spec: ComplexSpec) -> list[ComplexImage]:
    spec.check()
    out = [render(spec, i, GOOD, Split.TRAIN) for i in range(spec.n_train)]
    out += [render(spec, i, GOOD, Split.TEST) for i in range(spec.n_test_good)]
    out += [render(spec, i, t) for t in COMPLEX_DEFECT_TYPES for i in range(spec.n_defects_per_type)]
    return out


def write_mvtec(spec: ComplexSpec, root: str | Path) -> Path:
    """Write the set in the MVTec layout (plus ``segments/``) under ``root/complex``."""
    return write_samples(Path(root) / COMPLEX_CATEGORY, generate(spec))


def load_complex(spec: ComplexSpec | None = None, cache_dir: str | Path | None = None) -> Dataset:
    """The built-in ``synthetic/complex`` set: written once per spec into the cache, then read from disk."""
    spec = spec or ComplexSpec()
    spec.check()
    folder = f"synthetic-{COMPLEX_CATEGORY}-v{GENERATOR_VERSION}-{spec.key()}"
    root = generated_set(folder, cache_dir, lambda tmp: write_mvtec(spec, tmp))
    return load_mvtec(root, COMPLEX_CATEGORY, name="synthetic")
