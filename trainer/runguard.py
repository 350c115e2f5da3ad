"""Guards around a run's directory and disk, checked by the driver before anything is written.

- :func:`check_writable`: ``output_dir`` / ``checkpoint.dir`` must be writable directories
  (not files, not read-only) before any worker starts.
- :func:`check_run_dir`: ``--resume none`` into a directory holding checkpoints is refused,
  naming them; ``--overwrite`` moves them (and the old W&B run id and tokenizer) aside to
  ``<output_dir>/previous-<time>/``, or deletes them (``--overwrite delete``).
- :func:`check_compatible`: a resume whose config differs from the checkpoint's in what
  cannot change (architecture, tuning, trainable set, tokenizer, shards) is refused in one
  line naming the keys, before the run dir's ``config.yaml`` is touched.
- :func:`check_free_space` / :func:`storage_errors`: a checkpoint is not started on a disk
  without room for the previous one's size, and ENOSPC / EROFS / EACCES become one line
  naming the path.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional


class RunDirError(RuntimeError):
    """A run directory rrg must not write into as asked (mixing runs, incompatible resume)."""


class StorageError(OSError):
    """Disk full, read-only file system or no permission, naming the path."""


_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
                   errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                   errno.EDQUOT: "disk quota exceeded"}


def storage_message(err: OSError, path: str | os.PathLike) -> Optional[str]:
    reason = _STORAGE_ERRNOS.get(err.errno or 0)
    return None if reason is None else f"cannot write {err.filename or path}: {reason}"


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike, cleanup: Optional[Path] = None) -> Iterator[None]:
    """Map ENOSPC/EROFS/EACCES (also inside torch's RuntimeErrors) to :class:`StorageError`;
    ``cleanup`` (a partial temp file or dir) is removed on any failure."""
    try:
        yield
    except BaseException as err:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True) if Path(cleanup).is_dir() else Path(cleanup).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, StorageError):
            msg = storage_message(err, path)
            if msg:
                raise StorageError(err.errno, msg) from None
        if isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "No space left" in str(err)):
            raise StorageError(errno.ENOSPC, f"cannot write {path}: no space left on device (write failed)") from None
        raise


def check_writable(path: str | os.PathLike, what: str) -> None:
    """``path`` is (or can be created as) a directory this process may write into."""
    p = Path(path)
    for parent in [p, *p.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise StorageError(errno.ENOTDIR, f"{what} {p}: {parent} exists and is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise StorageError(errno.EACCES, f"{what} {p}: {parent} is not writable")
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".rrg-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise StorageError(err.errno, storage_message(err, p) or f"{what} {p}: {err.strerror}") from None


def check_free_space(directory: str | os.PathLike, needed: int) -> None:
    """Refuse to start a checkpoint when the file system cannot hold ``needed`` bytes (+5%)."""
    existing = next(p for p in [Path(directory), *Path(directory).parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if needed and free < needed * 1.05:
        raise StorageError(errno.ENOSPC, f"cannot write a checkpoint to {directory}: {free / 2**20:.1f} MiB free, "
                                         f"the last one took {needed / 2**20:.1f} MiB")


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def existing_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p.name.startswith("step_") or p.name.startswith(".tmp-")))


def check_run_dir(output_dir: Path, checkpoint_dir: Path, resume: str, overwrite: Optional[str]) -> None:
    """Refuse (or with ``overwrite`` = move/delete, clear) a fresh start over an old run's checkpoints."""
    found = existing_checkpoints(checkpoint_dir)
    old = [checkpoint_dir, output_dir / "wandb_run_id", output_dir / "tokenizer", output_dir / "result.json",
           output_dir / "train_log.jsonl"]
    # a run that died before its first checkpoint still left its tokenizer and W&B id: a fresh start
    # would silently reuse both (another vocabulary than the config's, the old W&B run)
    leftovers = [p for p in old[1:] if p.is_file() or (p.is_dir() and any(p.iterdir()))]
    if resume != "none" or not (found or leftovers):
        return
    if not overwrite:
        if found:
            names = ", ".join(p.name for p in found[:5]) + (" ..." if len(found) > 5 else "")
            raise RunDirError(f"--resume none but {checkpoint_dir} already holds checkpoints ({names}): "
                              f"use another output_dir, --resume auto, or --overwrite (moves them aside)")
        raise RunDirError(f"--resume none but {output_dir} holds an earlier run's "
                          f"{', '.join(p.name for p in leftovers)} (no checkpoint): use another output_dir, "
                          f"--resume auto (continue it), or --overwrite (moves them aside)")
    if overwrite == "delete":
        for p in old:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        print(f"rrg: --overwrite delete: removed the previous run's checkpoints in {checkpoint_dir}", flush=True)
        return
    aside = output_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True)
    for p in old:
        if p.exists():
            os.rename(p, aside / p.name)
    print(f"rrg: --overwrite: moved the previous run's checkpoints, tokenizer and W&B id to {aside}", flush=True)


# what must not change between a checkpoint and the config resuming it
FROZEN = ("model", "train.tuning", "train.train_vision", "train.lora")


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def _diff(a: Any, b: Any, key: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{key}.{k}")
        return out
    return [] if a == b else [f"{key} ({json.dumps(a)} in the checkpoint, {json.dumps(b)} now)"]


def check_compatible(point_meta: dict[str, Any], point_path: Path, config: dict[str, Any],
                     dataset_fingerprint: Optional[str], tokenizer_dir: Path) -> None:
    """One line naming everything that differs between a checkpoint and the config resuming it."""
    saved = point_meta.get("config") or {}
    diffs: list[str] = []
    for key in FROZEN:
        diffs += _diff(_get(saved, key), _get(config, key), key)
    fp = point_meta.get("manifest_fingerprint")
    if fp and dataset_fingerprint and fp != dataset_fingerprint:
        diffs.append(f"shards fingerprint ({fp[:12]}... in the checkpoint, {dataset_fingerprint[:12]}... now)")
    tok = point_meta.get("tokenizer_sha256")
    if tok and tokenizer_dir.is_dir() and tok != tokenizer_hash(tokenizer_dir):
        diffs.append(f"tokenizer ({tokenizer_dir} is not the one the checkpoint was trained with)")
    if diffs:
        raise RunDirError(f"cannot resume from {point_path}: {'; '.join(diffs)}")


def tokenizer_hash(tokenizer_dir: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(tokenizer_dir).rglob("*")):
        if p.is_file():
            h.update(p.relative_to(tokenizer_dir).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# -- errors rrg knows: one line, an exit code, never retried -----------------------------------------------
FATAL = "FATAL.json"
ERROR_LOG = "logs/worker_errors.log"  # below output_dir: the full tracebacks of the known errors workers raised

# Every error class rrg knows, as "module:Class" and its exit code: 2 config, 3 data, 4 checkpoint / run
# directory / model files, 5 disk, 6 diverged.  All of them are *non-transient*: the same inputs fail the
# same way again, so a Ray worker group that raised one is not restarted (cluster/ray_train.py), the
# command prints the error's message as one line and exits with the code (launcher/cli.py), and the
# workers' tracebacks go to <output_dir>/logs/worker_errors.log, not to the console.
# To register another error: add one line here (a subclass of a listed class is covered already).
# Only classes of the trainer floor or below belong here; the cluster floor adds its own in the CLI.
KNOWN_ERRORS: list[tuple[str, int]] = [
    ("configs.schema:ConfigError", 2),
    ("modeling.formats:ModelFormatError", 2),  # a model directory rrg cannot read as configured
    ("shards.manifest:ManifestError", 3),
    ("shards.reader:DataError", 3),
    ("shards.adapters:AdapterError", 3),
    ("shards.sidecars:SidecarError", 3),
    ("shards.buildlock:BuildLockedError", 3),
    ("shards.labeling.registry:LabelInputError", 3),
    ("modeling.family:TargetError", 3),
    ("modeling.family:FamilyImportError", 2),  # a family package (RRG_FAMILY_PATH too) that does not import
    ("shards.passes:PassImportError", 2),  # a pass package (RRG_PASS_PATH too) that does not import
    ("shards.passes:PassInputError", 3),  # a pass's model directory or input it cannot use
    ("trainer.safe_load:CheckpointTrustError", 4),
    ("trainer.runguard:RunDirError", 4),
    ("trainer.runlock:RunLockedError", 4),
    ("trainer.runguard:StorageError", 5),
    ("trainer.nonfinite:NonFiniteError", 6),
]


def _resolve(spec: str) -> type:
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def known_errors() -> list[tuple[tuple[type, ...], int]]:
    """:data:`KNOWN_ERRORS` and the data passes' ``errors`` as ``[(classes, exit code)]``, one entry per code."""
    from shards.passes import all_passes

    grouped: dict[int, list[type]] = {}
    for spec, code in [*KNOWN_ERRORS, *(e for p in all_passes() for e in p.errors)]:  # each data pass's own too
        grouped.setdefault(code, []).append(_resolve(spec))
    return [(tuple(types), code) for code, types in grouped.items()]


def known_error_types() -> dict[str, type]:
    return {t.__name__: t for types, _ in known_errors() for t in types}


def known_error(err: BaseException) -> Optional[tuple[str, int]]:
    """(registered class name, exit code) when ``err`` is an error rrg knows, else None."""
    for types, code in known_errors():
        for t in types:
            if isinstance(err, t):
                return t.__name__, code
    return None


_RECORDED: list[str] = []  # this process recorded a known error (Ray Train's own traceback log is then dropped)


def record_fatal(output_dir: str | os.PathLike, err: BaseException, rank: Optional[int] = None) -> bool:
    """For an error rrg knows: its traceback appended to ``logs/worker_errors.log`` and ``FATAL.json``
    written (the first one wins).  True if it was one; anything else is left to the caller."""
    import socket
    import traceback

    found = known_error(err)
    if found is None:
        return False
    name, code = found
    out = Path(output_dir)
    log = out / ERROR_LOG
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        head = (f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} rank {rank if rank is not None else '?'} "
                f"pid {os.getpid()} on {socket.gethostname()}: {name} (exit {code})\n")
        with open(log, "a") as f:  # one write per record: ranks appending at once do not interleave lines
            f.write(head + text + "\n")
    except OSError:  # a full disk is one of these errors: the record below still says what happened
        log = None
    path = out / FATAL
    if not path.exists():
        from configs.atomic import atomic_write_json

        try:
            message = err.strerror if isinstance(err, OSError) and err.strerror else str(err)  # no "[Errno 28]"
            atomic_write_json(path, {"type": name, "message": message, "exit_code": code, "rank": rank,
                                     "traceback_log": str(log) if log else None})
        except OSError:
            pass
    _RECORDED.append(name)
    return True


def recorded_in_this_process() -> bool:
    return bool(_RECORDED)


def raise_recorded_fatal(output_dir: str | os.PathLike) -> None:
    """Re-raise, on the driver, the known error a worker recorded (its message names the traceback log)."""
    path = Path(output_dir) / FATAL
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    cls = known_error_types().get(data.get("type"), RuntimeError)
    message = data.get("message", "")
    if data.get("traceback_log"):
        where = f"rank {data['rank']}" if data.get("rank") is not None else "a worker"
        message += f" [raised in {where}; traceback: {data['traceback_log']}]"
    raise cls("", message) if cls.__name__ == "ConfigError" else cls(message)
