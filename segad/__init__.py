"""segad: SegAD-style stacking of one-class anomaly detectors for visual inspection."""

__version__ = "0.1.0"
