"""Segments (product components) and the statistics of anomaly maps pooled over them."""

from features.segments import FolderSegments, KMeansConfig, KMeansSegments, SegmentSpec, WholeImage, make_segmenter
from features.statistics import STATISTICS, batch_statistics, segment_statistics

__all__ = [
    "STATISTICS",
    "FolderSegments",
    "KMeansConfig",
    "KMeansSegments",
    "SegmentSpec",
    "WholeImage",
    "batch_statistics",
    "make_segmenter",
    "segment_statistics",
]
