"""A real PostgreSQL server for the tests: a fresh cluster in a temporary folder, on 127.0.0.1 and a
free port, stopped and removed afterwards. It uses the machine's PostgreSQL programs (Debian's
``postgresql`` package, which ``.ci/run`` installs); the server refuses to run as root, so as root it
runs as the ``postgres`` user."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class NoPostgres(RuntimeError):
    pass


def postgres_bin() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, or Debian's versioned folder."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise NoPostgres("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    return versions[-1].parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(database: str = "segad") -> Iterator[str]:
    """Yields a SQLAlchemy URL (``postgresql+psycopg://segad@127.0.0.1:PORT/DATABASE``) of a live server."""
    bindir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="segad-pg-"))  # in /tmp: the postgres user can reach it
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*cmd: str | Path) -> None:
        done = subprocess.run([*as_owner, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if done.returncode:
            log = root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            said = done.stderr.strip() or done.stdout.strip()
            raise NoPostgres(f"{Path(str(cmd[0])).name} failed: {said}" + (f"\nserver log:\n{tail}" if tail else ""))

    try:
        run(bindir / "initdb", "-D", data, "-U", "segad", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
        run(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-o", opts, "start")
        try:
            run(bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "segad", database)
            yield f"postgresql+psycopg://segad@127.0.0.1:{port}/{database}"
        finally:
            run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    """A new, empty database on the server of ``url``; its URL."""
    import psycopg

    base, _, _ = url.rpartition("/")
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"
