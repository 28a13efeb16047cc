"""PL, Proportion Localised (Taylor et al., TMLR 2024; PyPI ``proportion-localised``).

The share of ground-truth defects that a single threshold localises: each defect region gets a
rotated box (``cv2.minAreaRect`` of its hull; sides below 1/8 of the image raised to it; boxes that
overlap by more than ``overlap_limit`` of the smaller one merged, two rounds); each box owns the
pixels nearer its centre than any other box's, plus the box. At a threshold t the region's IoU is
|map > t inside its pixels AND box| / |(map > t inside its pixels) OR box|. PL is, over 25
percentile thresholds of the pooled maps, the best share of regions with IoU above ``iou_limit``.

Same as the reference with ``anomaly_likelihood_definitely_increasing=True`` (our maps rise with
anomaly), at any image size rather than its hard-coded 256x256.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from segad.metrics._validate import MetricError, masks_and_maps

Rect = tuple[tuple[float, float], tuple[float, float], float]


def _scaled_box(mask: np.ndarray, min_side: float) -> Rect:
    contours, _ = cv2.findContours(mask.astype(np.uint8) * 255, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate([c[:, 0, :] for c in contours]))
    centre, (w, h), angle = cv2.minAreaRect(hull)
    return centre, (max(w, min_side), max(h, min_side)), angle


def _overlap(a: Rect, b: Rect) -> float:
    """Intersection over the area of the box with the smaller w + h (the second on a tie), as the reference."""
    pa, pb = cv2.boxPoints(a).astype(np.float32), cv2.boxPoints(b).astype(np.float32)
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    smaller = a if sum(a[1]) < sum(b[1]) else b
    return float(inter) / (smaller[1][0] * smaller[1][1])


def _merge_groups(boxes: list[Rect], overlap_limit: float) -> list[list[int]]:
    """Groups of boxes linked by overlaps; pairs visited nearest centres first, as the reference does."""
    n = len(boxes)
    centres = np.array([b[0] for b in boxes])
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    pairs.sort(key=lambda p: float(np.hypot(*(centres[p[0]] - centres[p[1]]))))
    graph: dict[int, list[int]] = {}
    for i, j in pairs:
        if _overlap(boxes[i], boxes[j]) > overlap_limit:
            graph.setdefault(i, []).append(j)
            graph.setdefault(j, []).append(i)
    groups, seen = [], set()
    for start in graph:
        if start in seen:
            continue
        stack, comp = [start], []
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            comp.append(v)
            stack.extend(reversed(graph[v]))
        groups.append(sorted(comp))
    groups += [[i] for i in range(n) if i not in seen]
    return groups


def defect_boxes(mask: np.ndarray, min_side: float, overlap_limit: float = 1 / 3) -> list[Rect]:
    """The scaled, merged rotated boxes of one image's ground-truth regions."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 2:  # one region (label 0 is background)
        return [_scaled_box(mask, min_side)]
    region_masks = [labels == k for k in range(1, n)]
    boxes = [_scaled_box(r, min_side) for r in region_masks]
    for _ in range(2):
        region_masks = [np.logical_or.reduce([region_masks[i] for i in g]) for g in _merge_groups(boxes, overlap_limit)]
        boxes = [_scaled_box(r, min_side) for r in region_masks]
    return boxes


def _region_ious(heatmap: np.ndarray, boxes: list[Rect], thresholds: np.ndarray) -> np.ndarray:
    """(regions, thresholds) IoU of each box's region at each threshold."""
    h, w = heatmap.shape
    yy, xx = np.mgrid[0:h, 0:w]
    centres = np.array([b[0] for b in boxes])  # (x, y)
    d2 = (xx[None] - centres[:, 0, None, None]) ** 2 + (yy[None] - centres[:, 1, None, None]) ** 2
    nearest = np.argmin(d2, axis=0)
    out = np.empty((len(boxes), thresholds.size))
    for r, box in enumerate(boxes):
        bb = np.zeros((h, w), np.uint8)
        cv2.drawContours(bb, [np.intp(cv2.boxPoints(box))], 0, 255, -1)
        in_box = bb > 0
        inside = np.sort(heatmap[in_box])
        outside = np.sort(heatmap[(nearest == r) & ~in_box])
        hit_in = inside.size - np.searchsorted(inside, thresholds, side="right")
        hit_out = outside.size - np.searchsorted(outside, thresholds, side="right")
        out[r] = hit_in / (hit_out + inside.size)
    return out


def proportion_localised(
    masks: Any,
    maps: Any,
    iou_limit: float = 0.3,
    min_target_scale: float = 1 / 8,
    overlap_limit: float = 1 / 3,
    n_thresholds: int = 25,
) -> float:
    """PL over the anomalous images of the set (normal images are ignored, as in the reference)."""
    m, a = masks_and_maps(masks, maps, "proportion_localised")
    anomalous = m.reshape(len(m), -1).any(axis=1)
    if not anomalous.any():
        raise MetricError("proportion_localised: no image has a defect region; PL is undefined")
    m, a = m[anomalous], a[anomalous]
    thresholds = np.percentile(a, np.linspace(0, 100, n_thresholds + 2)[1:-1])
    min_side = float(min(a.shape[1:]) // round(1 / min_target_scale))
    ious = np.concatenate(
        [_region_ious(h, defect_boxes(t, min_side, overlap_limit), thresholds) for h, t in zip(a, m, strict=True)]
    )
    return float((ious > iou_limit).mean(axis=0).max())
