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


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``: storage and tracking URLs are printed and logged,
    and a database password must reach neither a terminal log nor an MLflow param."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


def scrub(text: str, url: str) -> str:
    """``text`` (an error message, say) with ``url`` redacted and its password, in whatever form a
    driver echoed it, replaced by ``***``."""
    from urllib.parse import unquote, urlsplit

    text = text.replace(url, redact(url))
    password = urlsplit(url).password
    for form in {password, unquote(password)} if password else ():
        text = text.replace(form, "***")
    return text
