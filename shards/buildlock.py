"""One shard build per output directory: an exclusive lock file holding pid and host.

Why: two ``rrg shards build`` into one directory used to delete each other's
temporary files.  :func:`build_lock` creates ``<out>/.build.lock`` with
``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems) and writes
``{"pid", "host", "started"}`` into it.  A second build waits up to ``wait_s``
for the first to finish, then refuses naming the holder.  A lock whose process
is gone (same host, pid not alive) is stale: it is reported and taken over.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".build.lock"
EMPTY_LOCK_GRACE_S = 30.0  # a holder writes its pid microseconds after creating the lock


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


class BuildLockedError(RuntimeError):
    """Another live build holds the directory."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _try_take(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
    return True


def refuse_if_locked(out: str | os.PathLike) -> None:
    """Fail fast (before starting Ray) when a live build holds ``out``; the build itself still locks."""
    path = Path(out) / LOCK_NAME
    holder = _holder(path) if path.is_file() else {}
    pid, host = holder.get("pid"), holder.get("host")
    if isinstance(pid, int) and (host != socket.gethostname() or pid_alive(pid)) and pid != os.getpid():
        raise BuildLockedError(f"{Path(out)} is being built by pid {pid} on {host} (lock {path}); "
                               f"wait for it, or remove the lock if that process is gone")


@contextlib.contextmanager
def build_lock(out: str | os.PathLike, wait_s: float = 0.0, poll_s: float = 0.5) -> Iterator[Path]:
    """Hold ``<out>/.build.lock`` for the body; wait up to ``wait_s`` for another build, else refuse."""
    path = Path(out) / LOCK_NAME
    deadline = time.monotonic() + wait_s
    while not _try_take(path):
        holder = _holder(path)
        pid, host = holder.get("pid"), holder.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
            print(f"rrg: removing a stale build lock {path} (pid {pid} on {host} is gone)", flush=True)
            path.unlink(missing_ok=True)
            continue
        if not isinstance(pid, int) and _age(path) > EMPTY_LOCK_GRACE_S:
            # created but never written (the holder died between the two): nobody can be building
            print(f"rrg: removing an empty build lock {path} (no holder written for "
                  f"{_age(path):.0f}s)", flush=True)
            path.unlink(missing_ok=True)
            continue
        if time.monotonic() >= deadline:
            raise BuildLockedError(f"{Path(out)} is being built by pid {pid} on {host} (lock {path}); "
                                   f"wait for it, or remove the lock if that process is gone")
        time.sleep(poll_s)
    try:
        yield path
    finally:
        if _holder(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
