"""Sharded checkpoints that are published atomically and never destroy the previous one.

Layout under ``checkpoint_dir``::

    latest                      text file naming the newest complete checkpoint (replaced atomically)
    step_000200/
        ds/                     DeepSpeed's sharded model + optimizer state (every rank writes its part)
        client/rank_00000.json  per-rank client state: step, and each ``rank``-scope component's state
                                under its name (``reader``, ``rng``: python/numpy RNG)
        client/rank_00000.rng.safetensors   their tensors (the torch and CUDA RNG states)
        meta.json               global step, world size, ZeRO stage, tuning, manifest fingerprint, resolved
                                config, and the ``run``-scope components' keys (``stage``, ``stage_name``,
                                ``skipped_samples``, ``wandb_id``)
        COMPLETE                written last, before the rename: the checkpoint is valid iff it exists;
                                it lists every file's digest (sha256 over 64 MiB pieces, every file
                                fsynced first), checked before loading (trainer/safe_load.py)
        universal/              made on demand when resuming with another world size
    .tmp-step_000300/           a save in progress (or one a crash interrupted); ignored and cleaned
    .trash-step_000100/         an old checkpoint being pruned (or one a crash left); ignored and cleaned

A save writes everything into ``.tmp-step_N``, waits for every rank, writes
``COMPLETE``, renames the directory to ``step_N`` and only then points ``latest``
at it, so a crash at any moment leaves the previous checkpoint loadable.
Checkpoints beyond ``keep_last`` are pruned by a background thread while training goes on:
each is first renamed to ``.trash-step_N`` (atomic: it is no longer a checkpoint anyone would
load) and then removed; the next save waits for that thread.
torch.save's zip CRC32 is not computed (``COMPLETE``'s digests cover every byte; loading does
not need it), which makes writing DeepSpeed's files about a third faster.
What a resume restores is registered with the manager (:meth:`CheckpointManager.register`, the
components of trainer/stateful.py), saved and restored alike.
Nothing here is a pickle except DeepSpeed's own files, and those are loaded with
``weights_only=True`` and an allow-list (trainer/safe_load.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file

from configs.atomic import atomic_write_text
from trainer import chaos
from trainer.runguard import check_free_space, dir_size, storage_errors
from trainer.safe_load import verify_checkpoint, write_complete
from trainer.stateful import Stateful

STEP_PREFIX = "step_"
DS_TAG = "ds"
UNIVERSAL_TAG = "universal"
TENSOR_INDEX = "tensor_keys"  # client json: component -> its keys in the rank's tensor file
RESERVED_CLIENT_KEYS = {"step", TENSOR_INDEX}
RESERVED_META_KEYS = {"global_step", "world_size"}


def step_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:07d}"


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)  # a failed write leaves no temp file behind


class _no_zip_crc32:
    """torch.save skips the zip records' CRC32 inside (restored after)."""

    def __enter__(self) -> None:
        self._was = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(False)

    def __exit__(self, *exc) -> None:
        torch.serialization.set_crc32_options(self._was)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ResumePoint:
    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["global_step"])

    @property
    def world_size(self) -> int:
        return int(self.meta["world_size"])

    def client_state(self, rank: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        client = self.path / "client"
        meta = json.loads((client / f"rank_{rank:05d}.json").read_text())
        tensors = load_file(str(client / f"rank_{rank:05d}.rng.safetensors"))
        return meta, tensors


class CheckpointManager:
    """Save / find / prune checkpoints.  ``barrier`` synchronises the ranks (no-op for one)."""

    def __init__(self, root: str | os.PathLike, *, rank: int, world_size: int, keep_last: int,
                 barrier: Callable[[], None] = lambda: None, trusted: bool = False):
        self.root = Path(root)
        self.trusted = trusted  # --trust-checkpoint: skip hash checks (full pickle when loading)
        self.rank, self.world_size, self.keep_last = rank, world_size, keep_last
        self.barrier = barrier
        self._pruner: Optional[threading.Thread] = None
        self.components: dict[str, tuple[Stateful, str]] = {}  # name -> (component, scope), restored in this order

    # -- what a checkpoint restores ---------------------------------------------------------
    def register(self, name: str, component: Stateful, scope: str = "rank") -> None:
        """Save ``component`` with every checkpoint and restore it on resume (scopes: trainer/stateful.py)."""
        if scope not in ("rank", "run"):
            raise ValueError(f"scope must be 'rank' or 'run', not {scope!r}")
        if name in self.components or name in RESERVED_CLIENT_KEYS:
            raise ValueError(f"checkpoint component {name!r} is registered already (or reserved)")
        self.components[name] = (component, scope)

    def _collect(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
        """(client json, client tensors, meta keys) of the registered components, as they are now."""
        client: dict[str, Any] = {}
        tensors: dict[str, torch.Tensor] = {}
        index: dict[str, list[str]] = {}
        meta: dict[str, Any] = {}
        for name, (component, scope) in self.components.items():
            state = component.state_dict()
            if scope == "run":
                clash = set(state) & (set(meta) | RESERVED_META_KEYS)
                if clash:
                    raise ValueError(f"checkpoint component {name!r}: meta keys {sorted(clash)} are taken")
                meta.update(state)
                continue
            own = {k: v for k, v in state.items() if torch.is_tensor(v)}
            if set(own) & set(tensors):
                raise ValueError(f"checkpoint component {name!r}: tensor keys {sorted(set(own) & set(tensors))} "
                                 f"are taken")
            tensors.update(own)
            if own:
                index[name] = sorted(own)
            client[name] = {k: v for k, v in state.items() if k not in own}
        if index:
            client[TENSOR_INDEX] = index
        return client, tensors, meta

    def restore(self, point: ResumePoint, names: Optional[list[str]] = None, skip: tuple[str, ...] = ()) -> None:
        """Load the registered components (``names``, default all but ``skip``) from ``point``.

        With another world size than the checkpoint's, every rank reads rank 0's ``rank``-scope state
        (the reader re-plans the rest of the epoch itself; RNG streams are seeded anew).
        """
        resized = point.world_size != self.world_size
        client = tensors = None
        for name in names if names is not None else list(self.components):
            if name in skip:
                continue
            component, scope = self.components[name]
            if scope == "run":
                component.load_state_dict(point.meta)
                continue
            if client is None:
                client, tensors = point.client_state(0 if resized else self.rank)
            # checkpoints before the index held one component with tensors: the RNG streams
            keys = client.get(TENSOR_INDEX, {"rng": sorted(tensors)}).get(name, [])
            state = {**client[name], **{k: tensors[k] for k in keys}}
            if resized and hasattr(component, "load_resized"):
                component.load_resized(state, point.step)
            else:
                component.load_state_dict(state)

    # -- finding -------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir()
                 if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / "COMPLETE").is_file()]
        return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))

    def latest(self) -> Optional[Path]:
        """The checkpoint ``latest`` names if it is complete, else the newest complete one."""
        pointer = self.root / "latest"
        if pointer.is_file():
            candidate = self.root / pointer.read_text().strip()
            if (candidate / "COMPLETE").is_file():
                return candidate
        done = self.complete_checkpoints()
        return done[-1] if done else None

    def resolve(self, resume: str) -> Optional[ResumePoint]:
        """``auto`` (latest if any), ``none``, or an explicit checkpoint directory."""
        if resume == "none":
            return None
        if resume in ("auto", "latest"):
            path = self.latest()
            if path is None:
                if resume == "latest":
                    raise FileNotFoundError(f"no complete checkpoint under {self.root}")
                return None
        else:
            path = Path(resume)
            if not (path / "COMPLETE").is_file():
                raise FileNotFoundError(f"{path} is not a complete rrg checkpoint (no COMPLETE marker)")
        if not self.trusted:
            verify_checkpoint(path)
        return ResumePoint(path, json.loads((path / "meta.json").read_text()))

    # -- saving --------------------------------------------------------------------------
    def save(self, step: int, *, write_shards: Callable[[str, str], None], meta: Optional[dict[str, Any]] = None,
             client: Optional[dict[str, Any]] = None) -> Path:
        """Collective: every rank calls; the registered components' state is added to ``client`` (this
        rank's) and ``meta`` (rank 0's, the same on every rank).  Returns the published path."""
        self.wait()  # the previous save's pruning is over (it also frees the space counted below)
        name = step_name(step)
        tmp = self.root / f".tmp-{name}"
        final = self.root / name
        previous = self.latest()
        check_free_space(self.root, dir_size(previous) if previous else 0)  # every rank: all refuse alike
        with storage_errors(tmp, cleanup=tmp):  # ENOSPC/EROFS/EACCES: one line, no partial temp dir left
            return self._save(step, name, tmp, final, write_shards, meta or {}, client or {})

    def _save(self, step: int, name: str, tmp: Path, final: Path, write_shards, meta, client) -> Path:
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "client").mkdir(parents=True)
        self.barrier()
        with _no_zip_crc32():
            write_shards(str(tmp), DS_TAG)
        own_client, tensors, own_meta = self._collect()  # after the shards, as the RNG streams were read before
        meta = {**meta, **own_meta}
        client_dir = tmp / "client"
        _atomic_write(client_dir / f"rank_{self.rank:05d}.json", json.dumps({"step": step, **client, **own_client}))
        save_file(tensors, str(client_dir / f"rank_{self.rank:05d}.rng.safetensors"))
        chaos.point("checkpoint_write", step, self.rank)  # every file written, no COMPLETE yet
        self.barrier()
        if self.rank == 0:
            _atomic_write(tmp / "meta.json", json.dumps({**meta, "global_step": step,
                                                         "world_size": self.world_size}, indent=1))
            write_complete(tmp, name, _atomic_write)
            if final.exists():  # a re-save of the same step (e.g. after a restart): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            _atomic_write(self.root / "latest", name)
            self._pruner = threading.Thread(target=self._prune, args=(final,), name="rrg-prune", daemon=True)
            self._pruner.start()
        self.barrier()
        return final

    def wait(self) -> None:
        """Return once the background pruning of the last save is over."""
        if self._pruner is not None:
            self._pruner.join()
            self._pruner = None

    def _prune(self, keep: Path) -> None:
        done = self.complete_checkpoints()
        for old in done[: max(0, len(done) - self.keep_last)]:
            if old != keep:
                trash = old.with_name(f".trash-{old.name}")
                shutil.rmtree(trash, ignore_errors=True)
                os.rename(old, trash)  # from here on it is not a checkpoint; a crash leaves only trash
                chaos.point("prune", int(keep.name[len(STEP_PREFIX):]), self.rank)
        for stale in [*self.root.glob(".trash-*"), *self.root.glob(".tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)

    def remove_leftovers(self) -> list[Path]:
        """``.tmp-*`` (interrupted saves) and ``.trash-*`` (interrupted pruning) directories; only safe
        while no other run writes here, i.e. with the run lock held (trainer/runlock.py)."""
        if not self.root.is_dir():
            return []
        found = sorted([*self.root.glob(".tmp-*"), *self.root.glob(".trash-*")])
        for p in found:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return found

    # -- world-size changes -----------------------------------------------------------------
    def ensure_universal(self, point: ResumePoint) -> str:
        """Convert ``point`` to DeepSpeed's universal format once (rank 0); returns the tag to load."""
        target = point.path / UNIVERSAL_TAG
        if self.rank == 0 and (target / "COMPLETE").is_file() and not self.trusted:
            from trainer.safe_load import CheckpointTrustError, verify_checkpoint

            try:  # a conversion that came with a copied checkpoint is not trusted: made here again
                verify_checkpoint(target)
            except CheckpointTrustError as err:
                print(f"rrg: converting {point.path} to the universal format again ({err})", flush=True)
                shutil.rmtree(target)
        if self.rank == 0 and not (target / "COMPLETE").is_file():
            tmp = point.path / f".tmp-{UNIVERSAL_TAG}"
            shutil.rmtree(tmp, ignore_errors=True)
            cmd = [sys.executable, "-m", "trainer.safe_load"] if not self.trusted else [sys.executable, "-m"]
            cmd += ["deepspeed.checkpoint.ds_to_universal",
                   "--input_folder", str(point.path / DS_TAG), "--output_folder", str(tmp),
                   "--num_extract_workers", "1", "--num_merge_workers", "1"]
            if int(point.meta.get("zero_stage", 0)) < 3:
                cmd.append("--inject_missing_state")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"universal checkpoint conversion of {point.path} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            from trainer.safe_load import write_complete

            write_complete(tmp, UNIVERSAL_TAG, _atomic_write)  # hashed like every checkpoint rrg writes
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
        self.barrier()
        return UNIVERSAL_TAG
