"""Where segad keeps what it computes (datasets it generates, anomaly maps, models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SEGAD_CACHE_DIR`` if set, else ``~/.cache/segad``: shared by every project on the machine."""
    env = os.environ.get("SEGAD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segad"


def check_writable_dir(path: str | Path, what: str) -> Path:
    """``path`` as a folder segad can create or write into, checked before any long work: a model
    folder under a file, or a read-only cache, must fail in the first second, not after the run."""
    from detectors.errors import InputError

    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{what} {path}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: {existing} is not writable; choose another path or fix its permissions")
    return path
