"""One training run per output directory: ``<output_dir>/.run.lock``, taken by the driver first.

Why: a second ``rrg train`` with the same ``output_dir`` (typed twice, or a SLURM job requeued while
its previous allocation is still alive on a shared file system) used to resume from the first one's
newest checkpoint and train beside it, into one ``checkpoints/``, one ``train_log.jsonl`` and one
W&B run.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and NFSv3+) and
holds ``{host, pid, started, token, ...}``.  While the run lives, a thread touches it every
``lock_stale_s / 4`` seconds (its mtime is the heartbeat).  Another run

- refuses in one line naming the holder (:class:`RunLockedError`, exit 4), after waiting up to
  ``checkpoint.lock_wait_s`` (a requeued SLURM job of the same job id waits for the old allocation
  to go silent, up to twice ``lock_stale_s``);
- takes over a *stale* lock, and says so: the holder's process is gone (same host) and so are the
  workers it started (``pids/rank_*.json``: a killed driver's workers may still be writing a
  checkpoint), or its host has not touched the lock for ``checkpoint.lock_stale_s``.

A takeover renames the stale file to a unique name first (only one contender can), checks that the
file it moved is the one it judged stale, then creates its own.  Child processes of the holder
(``rrg train cluster.backend=torchrun`` runs torchrun) find its token in ``RRG_RUN_LOCK_TOKEN``
and run under the driver's lock.  ``--resume auto`` and SLURM requeues work as before: the lock is
released when the driver exits, also after a preemption (exit 75).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

from shards.buildlock import pid_alive
from trainer.runguard import RunDirError

LOCK_NAME = ".run.lock"
TOKEN_ENV = "RRG_RUN_LOCK_TOKEN"
EMPTY_LOCK_GRACE_S = 30.0  # a holder writes its record microseconds after creating the file


class RunLockedError(RunDirError):
    """Another live run holds the output directory."""


def process_start_time(pid: int) -> Optional[float]:
    """Wall-clock start of ``pid`` from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def same_process(pid: int, written_at: float) -> bool:
    """``pid`` is alive and is the process that wrote a record at ``written_at`` (not a reused pid)."""
    if not pid_alive(pid):
        return False
    started = process_start_time(pid)
    return started is None or started <= written_at + 2.0  # a reused pid started after the record


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _age(path: Path) -> Optional[float]:
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except OSError:
        return None


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {when}{job})"


def live_workers(output_dir: Path) -> list[int]:
    """Pids of this host's training workers of the last run in ``output_dir`` that are still alive."""
    found = []
    host = socket.gethostname()
    for path in sorted((output_dir / "pids").glob("rank_*.json")):
        rec = _read(path) or {}
        pid, at = rec.get("pid"), rec.get("started")
        if rec.get("host") == host and isinstance(pid, int) and isinstance(at, (int, float)) and \
                pid != os.getpid() and same_process(pid, at):
            found.append(pid)
    return found


def write_worker_record(output_dir: Path, rank: int) -> None:
    """``pids/rank_<r>.json``: what a later run's lock needs to know whether this worker still lives."""
    from configs.atomic import atomic_write_json

    atomic_write_json(Path(output_dir) / "pids" / f"rank_{rank}.json",
                      {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})


class RunLock:
    """The held lock; :meth:`release` (or leaving :func:`run_lock`) gives it back."""

    def __init__(self, path: Path, token: str, stale_s: float):
        self.path, self.token, self.stale_s = path, token, stale_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="rrg-run-lock", daemon=True)
        self.lost: Optional[dict[str, Any]] = None
        self._thread.start()

    def _beat(self) -> None:
        period = max(0.5, self.stale_s / 4)
        while not self._stop.wait(period):
            holder = _read(self.path)
            if holder is not None and holder.get("token") == self.token:
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # a file system hiccup: the next beat tries again
            elif self.lost is None:
                self.lost = holder or {}
                print(f"rrg: warning: the run lock {self.path} was taken over by "
                      f"{_describe(self.lost) if self.lost else 'nobody (removed)'}: another run may now write "
                      f"this output_dir", flush=True)

    def release(self) -> None:
        self._stop.set()
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        os.environ.pop(TOKEN_ENV, None)


def _try_create(path: Path, record: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _stale_reason(path: Path, holder: dict[str, Any], output_dir: Path, stale_s: float) -> Optional[str]:
    """Why the lock's holder cannot be running any more (None: it may be)."""
    age = _age(path)
    if age is None:
        return None
    pid, host, started = holder.get("pid"), holder.get("host"), holder.get("started")
    if not isinstance(pid, int):
        return f"no holder written for {age:.0f}s" if age > EMPTY_LOCK_GRACE_S else None
    if host == socket.gethostname():
        if same_process(pid, float(started) if isinstance(started, (int, float)) else time.time()):
            return None
        workers = live_workers(output_dir)
        if workers:
            return None  # the driver is gone but its workers may still write a checkpoint
        return f"pid {pid} on {host} is gone"
    if age > stale_s:
        return f"{host} has not touched it for {age:.0f}s (checkpoint.lock_stale_s={stale_s:g})"
    return None


def _take_over(path: Path, holder: dict[str, Any], token: str) -> bool:
    """Move the stale lock aside, atomically; False if someone else got there first."""
    aside = path.with_name(f"{path.name}.stale-{token}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = _read(aside) or {}
    if moved.get("token") != holder.get("token") or moved.get("pid") != holder.get("pid"):
        # another contender replaced the stale lock with its fresh one in between: put it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def acquire(output_dir: str | os.PathLike, *, stale_s: float = 120.0, wait_s: float = 0.0,
            poll_s: float = 0.5) -> Optional[RunLock]:
    """Take ``<output_dir>/.run.lock`` (None: this process runs under its parent driver's lock)."""
    out = Path(output_dir)
    path = out / LOCK_NAME
    inherited = os.environ.get(TOKEN_ENV)
    if inherited:  # this process (rrg train, then its backend) or its parent driver holds it already
        holder = _read(path) or {}
        if holder.get("token") == inherited:
            return None
    token = uuid.uuid4().hex
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "token": token,
              "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_restart": os.environ.get("SLURM_RESTART_COUNT"),
              "command": " ".join(sys.argv)[:500]}
    t0 = time.monotonic()
    announced = False
    while True:
        if _try_create(path, record):
            os.environ[TOKEN_ENV] = token
            return RunLock(path, token, stale_s)
        holder = _read(path)
        if holder is None:
            continue  # released just now
        reason = _stale_reason(path, holder, out, stale_s)
        if reason is not None:
            if _take_over(path, holder, token):
                print(f"rrg: taking over the stale run lock {path} of {_describe(holder)}: {reason}", flush=True)
            continue
        pid, started = holder.get("pid"), holder.get("started")
        orphans = (holder.get("host") == socket.gethostname() and isinstance(pid, int)
                   and not same_process(pid, float(started) if isinstance(started, (int, float)) else time.time()))
        requeued = bool(record["slurm_job_id"]) and holder.get("slurm_job_id") == record["slurm_job_id"]
        # a dead driver's workers exit within seconds (Ray's fate sharing) or must be stopped by hand;
        # a requeued SLURM job waits for its previous allocation to go silent
        limit = max(wait_s, stale_s) if orphans else max(wait_s, 2 * stale_s) if requeued else wait_s
        if time.monotonic() - t0 >= limit:
            extra = ""
            if orphans:
                extra = (f"; its driver is gone but its workers (pids {', '.join(map(str, live_workers(out)))}) "
                         f"are still running")
            raise RunLockedError(f"{out} is in use by another training run: {_describe(holder)}{extra} "
                                 f"(lock {path}); use another output_dir, or wait for it to finish")
        if not announced:
            why = (" (its driver is gone; waiting for its workers to exit)" if orphans else
                   " (the same SLURM job, requeued: its previous allocation must go silent first)" if requeued else "")
            print(f"rrg: {out} is in use by {_describe(holder)}: waiting up to {limit:.0f}s{why}", flush=True)
            announced = True
        time.sleep(poll_s)


def acquire_checked(output_dir: str | os.PathLike, *, stale_s: float = 120.0, wait_s: float = 0.0) -> Optional[RunLock]:
    """:func:`acquire`, after making sure ``output_dir`` is (or can be made) a writable directory."""
    from trainer.runguard import check_writable

    check_writable(output_dir, "output_dir")  # a file in the way or a read-only dir: one line, exit 5
    return acquire(output_dir, stale_s=stale_s, wait_s=wait_s)


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike, *, stale_s: float = 120.0, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the run lock of ``output_dir`` for the body (created if missing)."""
    lock = acquire_checked(output_dir, stale_s=stale_s, wait_s=wait_s)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def run_lock_of(cfg) -> contextlib.AbstractContextManager:
    """:func:`run_lock` for a run config (``checkpoint.lock_stale_s`` / ``lock_wait_s``)."""
    return run_lock(Path(cfg.output_dir).resolve(), stale_s=cfg.checkpoint.lock_stale_s,
                    wait_s=cfg.checkpoint.lock_wait_s)
