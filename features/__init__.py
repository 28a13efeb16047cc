"""Segments (product components) and the statistics of anomaly maps pooled over them."""
