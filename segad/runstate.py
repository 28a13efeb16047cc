"""MLflow runs whose process died: found on the next start and marked KILLED, never left RUNNING.

A run ends FAILED or KILLED when its process can still say so (an error, Ctrl-C). SIGKILL, the
out-of-memory killer or a power cut leave it RUNNING for ever, and ``mlflow ui`` then shows a run in
progress that no process will finish. Every run we create carries its owner (host, pid and the
process's start time, so a reused pid is not mistaken for the owner); the next segad process on that
host closes the runs whose owner is gone. Runs owned by another host are left to that host.
"""

from __future__ import annotations

import os
import socket
from typing import Any

HOST, PID, STARTED = "segad.host", "segad.pid", "segad.pid_started"


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux); "" where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces
    except (OSError, IndexError):
        return ""


def ended_by(error: BaseException) -> tuple[str, str]:
    """The status and ``error`` tag of a run its own process ends on ``error``: Ctrl-C is KILLED, the rest FAILED."""
    if isinstance(error, KeyboardInterrupt):
        return "KILLED", "interrupted (Ctrl-C)"
    return "FAILED", f"{type(error).__name__}: {error}"[:5000]


def owner_tags() -> dict[str, str]:
    """Tags naming this process as a run's owner."""
    pid = os.getpid()
    return {HOST: socket.gethostname(), PID: str(pid), STARTED: _started(pid)}


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return not started or _started(pid) in ("", started)


def close_stale_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``experiment_id`` whose owning process on this host has ended."""
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST}` = '{host}'"
    )
    closed = []
    for run in runs:
        tags = run.data.tags
        try:
            pid = int(tags.get(PID, ""))
        except ValueError:
            continue
        if _alive(pid, tags.get(STARTED, "")):
            continue
        client.set_tag(
            run.info.run_id,
            "error",
            f"its process (pid {pid} on {host}) ended without closing the run: killed (SIGKILL, out of memory, "
            "power loss); marked KILLED by the next segad run",
        )
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed
