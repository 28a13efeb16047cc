"""Where segad keeps what it computes (datasets it generates, anomaly maps, models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SEGAD_CACHE_DIR`` if set, else ``~/.cache/segad``: shared by every project on the machine."""
    env = os.environ.get("SEGAD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segad"
