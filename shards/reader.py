"""The streaming shard reader: deterministic, rank-balanced, exactly resumable, robust to bad input.

One :class:`ShardLoader` per rank.  The pipeline, stage by stage (index planning
is pure and lives in :mod:`shards.plan`; reading and decoding live here):

1. shard list of the split (manifest order) -> virtual index space ``[0, N)``
2. seeded per-epoch shard permutation -> the epoch's virtual order
3. split by rank: equal contiguous ranges (train: ``N // world_size`` each, the
   ``N % world_size`` remainder dropped, a different one each epoch; eval: ceil
   ranges, short ranks padded with weight-0 fillers), whole batches only
4. split by DataLoader worker: batch ``j`` of a rank is built by worker ``j % W``,
   matching the DataLoader's round-robin, so the rank's batch sequence is planned
5. block shuffle inside each worker (train only), position-addressable; optionally
   (``data.bucket_by_length``) batches regrouped by length per window (:mod:`shards.bucketing`)
6. read: tar members of the wanted samples, shard verified once per process (an ``s3://`` set
   with ``data.cache: false``: each shard streamed into a small spool, sha256-checked on arrival)
7. decode late (PNG/JPEG, masks, kg, json) -> :class:`DecodedSample`
8. family ``builder`` per sample, family ``collate`` per batch, plus
   ``sample_weight`` (1 real, 0 filler), ``keys`` and ``skipped``

Epochs: ``__iter__`` yields the rest of the current epoch; called after its last batch it
starts the next epoch itself, so ``while step < max_steps: for batch in loader:`` just works.

Resume policy (``state_dict``/``load_state_dict``): the state is
``{"epoch", "segments": [{world_size, num_workers, batch_size, shuffle_buffer, consumed}],
"fingerprint", ...}``; ``consumed`` counts batches handed to the caller (not
prefetched ones) and is the same on every rank.  The set of samples a segment
consumed is computed from the plan alone.  Restoring with the same
(world_size, num_workers, batch_size, shuffle_buffer) continues the last segment
exactly: every worker seeks straight to its shuffle block, nothing is replayed.
Restoring with a different one appends a segment whose samples are the epoch
order minus everything consumed so far, re-split among the new ranks/workers by
stages 3-5.  No sample is seen twice in an epoch and none is lost, except the
final segment's train-mode drop (fewer than ``world_size`` samples plus the
partial last batch of each rank).  A finished epoch stays finished.  A state
from another shard set (manifest fingerprint), split, seed or mode is refused.

Bad input (undecodable image, missing member, truncated tar, shard failing verification)
is skipped, logged with key and shard, and its slot refilled at ``sample_weight`` 0 with a
copy of a good sample (same batch, else the worker's last good one, else the next one
ahead), so batch counts and shapes stay equal across ranks.  A worker raises
:class:`DataError` once its skips exceed ``max_skip_fraction`` of its planned samples.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import tarfile
from dataclasses import replace
from typing import Any, Callable, Iterator, Literal, Optional

import numpy as np
import torch
from safetensors.numpy import load as load_safetensors
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import plan
from shards.bucketing import WindowBuckets, text_bytes
from shards.config import DataConfig
from shards.manifest import Manifest, ManifestError, ShardInfo, file_sha256, load_manifest
from shards.masks import decode_masks, sidecar_masks
from shards.records import DecodedSample
from shards.sidecars import index_tar
from shards.imageio import ImageSkip
from shards.views import decode_image

log = logging.getLogger("rrg.shards")
Builder = Callable[[DecodedSample], dict]
Collate = Callable[[list], dict]
_Members = dict[str, tuple[int, int]]  # suffix -> (data offset, size) inside the tar


class DataError(RuntimeError):
    """Too much bad input, or a data plan that cannot work (say, fewer samples than ranks x batch)."""


class _Bad(Exception):
    """One sample cannot be used; the message is the reason logged (``reason``: an image file's, when
    that is why: shards/imageio.py ``ImageSkip``)."""

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason


def default_builder(sample: DecodedSample) -> dict:
    return {"key": sample.key}


def default_collate(items: list[dict]) -> dict:
    """Stack equal-shaped arrays/tensors and scalars into tensors; anything else stays a list."""
    out: dict[str, Any] = {}
    for name in items[0]:
        vals = [it[name] for it in items]
        if all(isinstance(v, np.ndarray) for v in vals) and len({(v.shape, v.dtype) for v in vals}) == 1:
            out[name] = torch.from_numpy(np.stack(vals))
        elif all(isinstance(v, torch.Tensor) for v in vals) and len({v.shape for v in vals}) == 1:
            out[name] = torch.stack(vals)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[name] = torch.tensor(vals)
        else:
            out[name] = vals
    return out


def _identity(x):  # the DataLoader's collate: batches are built in the workers already
    return x

# ---------------------------------------------------------------- stage 6: read
class ShardFiles:
    """Per-process access to a split's tars: verification and member index, each done once per shard."""

    def __init__(self, manifest_root: str, verify: str, sidecars: Optional[dict[str, Any]] = None, keep: int = 3):
        from shards.storage import stream_source

        self.root, self.verify_mode = manifest_root, verify
        self.sidecars = sidecars or {}  # name -> SidecarInfo, joined by key into every sample read
        self._verified: dict[str, Optional[str]] = {}
        self._index: dict[str, tuple[list[tuple[str, _Members]], Optional[str]]] = {}
        self._side_index: dict[tuple[str, str], Any] = {}  # (sidecar, shard) -> key index | reason unusable
        # a streamed s3:// shard set (data.cache: false): shards come through a spool of ``keep`` local copies
        self.remote, self._keep, self._spool = stream_source(manifest_root), keep, None

    def path(self, shard: ShardInfo) -> str:
        if self.remote is not None:
            return str(self._stream(shard))
        return os.path.join(self.root, shard.file)

    def _stream(self, shard: ShardInfo):
        """The spooled local copy of a streamed shard, fetched now unless still resident (sha256-checked
        while it arrives in ``verify: checksum`` mode; a torn transfer is retried)."""
        from shards.storage import ShardSpool

        if self._spool is None:
            self._spool = ShardSpool(self.remote, self._keep)
        return self._spool.get(shard.file, shard.sha256 if self.verify_mode == "checksum" else None)

    def check(self, shard: ShardInfo) -> Optional[str]:
        """None if the shard matches the manifest per ``verify``, else why not (cached per process)."""
        if self.remote is not None:  # fetched (again, if the spool let it go) and checked on the way in
            if self._verified.get(shard.file) is None:
                self._verified[shard.file] = self._check_streamed(shard)
            return self._verified[shard.file]
        if shard.file not in self._verified:
            self._verified[shard.file] = self._check(shard, self.path(shard))
        return self._verified[shard.file]

    def _check_streamed(self, shard: ShardInfo) -> Optional[str]:
        from shards.storage import ChecksumMismatch, StorageError, join

        try:
            path = self._stream(shard)
        except FileNotFoundError:
            return f"shard file missing: {join(self.remote, shard.file)}"
        except StorageError as err:  # the same wrong bytes on every attempt: the object is not the manifest's
            if isinstance(err.last, ChecksumMismatch):
                return f"shard sha256 differs from the manifest (corrupt or rewritten): {err.last}"
            raise  # the store kept failing: not a data problem, never skipped silently
        if self.verify_mode == "size" and os.path.getsize(path) != shard.num_bytes:
            return f"shard size {os.path.getsize(path)} != manifest {shard.num_bytes}"
        return None

    def _check(self, shard: ShardInfo, path: str) -> Optional[str]:
        if not os.path.isfile(path):
            return f"shard file missing: {path}"
        if self.verify_mode == "size" and os.path.getsize(path) != shard.num_bytes:
            return f"shard size {os.path.getsize(path)} != manifest {shard.num_bytes}"
        if self.verify_mode == "checksum" and file_sha256(path) != shard.sha256:
            return "shard sha256 differs from the manifest (corrupt or rewritten)"
        return None

    def index(self, shard: ShardInfo) -> tuple[list[tuple[str, _Members]], Optional[str]]:
        """Samples of the tar in order as (key, members); scanning only headers (tarfile seeks past data)."""
        if shard.file not in self._index:
            samples: list[tuple[str, _Members]] = []
            err = None
            try:
                with tarfile.open(self.path(shard), "r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        dirname, base = posixpath.split(m.name)
                        stem, _, suffix = base.partition(".")
                        key = posixpath.join(dirname, stem)
                        if not samples or samples[-1][0] != key:
                            samples.append((key, {}))
                        samples[-1][1][suffix] = (m.offset_data, m.size)
            except (tarfile.TarError, OSError, EOFError) as e:
                err = f"tar unreadable after {len(samples)} samples ({e})"
            self._index[shard.file] = (samples, err)
        return self._index[shard.file]

    def read(self, shard: ShardInfo, ordinal: int, f) -> tuple[str, dict[str, bytes]]:
        """The raw members of the ``ordinal``-th sample of the shard (``f``: the shard opened 'rb')."""
        samples, err = self.index(shard)
        if ordinal >= len(samples):
            raise _Bad(f"sample #{ordinal} missing: truncated shard ({err or f'only {len(samples)} samples'})")
        key, members = samples[ordinal]
        data = {}
        for suffix, (offset, size) in members.items():
            f.seek(offset)
            data[suffix] = f.read(size)
            if len(data[suffix]) != size:
                raise _Bad(f"{key}: member .{suffix} truncated ({len(data[suffix])}/{size} bytes)")
        for name, side in self.sidecars.items():
            data.update(self._side_members(name, side, shard.file, key))
        return key, data

    def _side_members(self, name: str, side: Any, shard_file: str, key: str) -> dict[str, bytes]:
        """The sidecar's members for ``key`` (none when the sidecar does not cover that shard or study)."""
        if shard_file not in side.shards:
            return {}
        slot = (name, shard_file)
        if slot not in self._side_index:
            path = side.path(shard_file)
            if not os.path.isfile(path):
                self._side_index[slot] = f"sidecar '{name}' tar missing: {path}"
            elif self.verify_mode == "checksum" and file_sha256(path) != side.shards[shard_file]["sha256"]:
                self._side_index[slot] = f"sidecar '{name}' tar {path} differs from its sha256 (corrupt or rewritten)"
            else:
                try:
                    self._side_index[slot] = index_tar(path)
                except (tarfile.TarError, OSError, EOFError) as e:
                    self._side_index[slot] = f"sidecar '{name}' tar {path} unreadable ({e})"
        index = self._side_index[slot]
        if isinstance(index, str):
            raise _Bad(index)
        out = {}
        with open(side.path(shard_file), "rb") as f:
            for suffix, (offset, size) in index.get(key, {}).items():
                f.seek(offset)
                out[suffix] = f.read(size)
                if len(out[suffix]) != size:
                    raise _Bad(f"{key}: sidecar '{name}' member .{suffix} truncated")
        return out


# -------------------------------------------------------------- stage 7: decode
_image = decode_image  # shards/views.py: shared with `rrg generate`


def decode(key: str, shard: str, members: dict[str, bytes]) -> DecodedSample:
    """Raw members -> DecodedSample; raises _Bad naming what is wrong."""
    try:
        if "json" not in members:
            raise _Bad("missing member .json")
        record = json.loads(members["json"])
        images = []
        for i, view in enumerate(record.get("views") or [{"file": "view0.png"}]):
            suffix = view.get("member") or view.get("file") or next(
                (s for s in members if s.startswith(f"view{i}.")), f"view{i}.png")
            if suffix not in members:
                raise _Bad(f"missing member .{suffix}")
            try:
                images.append(_image(members[suffix]))
            except ImageSkip as skip:  # checked from its header: a bomb or empty view is never decoded
                raise _Bad(f"undecodable: member .{suffix}: {skip.reason} ({skip.detail})", reason=skip.reason) from None
        masks, channels = None, []
        if record.get("masks"):
            name = record["masks"].get("member", "masks.bin")
            if name not in members:
                raise _Bad(f"missing member .{name}")
            masks = decode_masks(members[name], record["masks"]["shape"])
            channels = list(record["masks"].get("channels", []))
        tensors = {suffix[: -len(".safetensors")]: load_safetensors(data) for suffix, data in members.items()
                   if suffix.endswith(".safetensors")}
        annotations = {suffix[: -len(".json")]: json.loads(data) for suffix, data in members.items()
                       if suffix.endswith(".json") and suffix != "json"}
        masks, channels = sidecar_masks(annotations, members) or (masks, channels)
        kg_name = (record.get("kg") or {}).get("member", "kg.safetensors")[: -len(".safetensors")]
        return DecodedSample(key, shard, record, images, masks, channels, tensors.get(kg_name), tensors, annotations)
    except _Bad:
        raise
    except Exception as e:  # undecodable bytes of any kind: PIL, json, zlib, safetensors
        raise _Bad(f"undecodable: {type(e).__name__}: {e}") from None


# ------------------------------------------------- stages 3-8 inside one worker
class _WorkerReader:
    """Reads, decodes and batches one worker's emitted slots; refills bad slots; counts skips."""

    def __init__(self, stream: np.ndarray, shards: list[ShardInfo], files: ShardFiles, *, block: int,
                 batch_size: int, builder: Builder, collate: Collate, max_skip: float, split: str,
                 bucket_seed: Optional[tuple[int, ...]] = None):
        self.stream, self.shards, self.files = stream, shards, files
        self.starts = plan.shard_starts([s.num_samples for s in shards])
        self.block, self.bs, self.builder, self.collate = block, batch_size, builder, collate
        self.planned = int((stream != plan.PAD).sum())
        self.max_skip, self.split = max_skip, split
        self.skipped: list[tuple[str, str, str]] = []
        self.last_good: Optional[DecodedSample] = None
        self._raw: dict[int, dict[int, Any]] = {}  # block -> position -> (key, members) | _Bad
        self.buckets = None if bucket_seed is None else WindowBuckets(  # data.bucket_by_length
            batch_size, max(1, block // batch_size), bucket_seed, self._text_bytes, len(stream))

    def _text_bytes(self, pos: int) -> int:
        raw = self._load_block(pos // self.block)[pos] if self.stream[pos] != plan.PAD else None
        return 0 if raw is None or isinstance(raw, _Bad) else text_bytes(raw[1])

    def _load_block(self, b: int) -> dict[int, Any]:
        """Stage 6 for one shuffle block: open each needed shard once, read its wanted samples."""
        if b not in self._raw:
            lo = b * self.block
            by_shard: dict[int, list[tuple[int, int]]] = {}
            for pos in range(lo, min(lo + self.block, len(self.stream))):
                if self.stream[pos] != plan.PAD:
                    shard, ordinal = plan.locate(int(self.stream[pos]), self.starts)
                    by_shard.setdefault(shard, []).append((ordinal, pos))
            out: dict[int, Any] = {}
            for shard, wanted in by_shard.items():
                out.update(self._read_shard(self.shards[shard], sorted(wanted)))
            self._raw = {k: v for k, v in self._raw.items() if k >= b - 1}  # keep memory to ~2 blocks
            self._raw[b] = out
        return self._raw[b]

    def _read_shard(self, info: ShardInfo, wanted: list[tuple[int, int]]) -> dict[int, Any]:
        why = self.files.check(info)
        if why is not None:
            return {pos: _Bad(f"shard failed verification ({self.files.verify_mode}): {why}") for _, pos in wanted}
        out: dict[int, Any] = {}
        with open(self.files.path(info), "rb") as f:
            for ordinal, pos in wanted:
                try:
                    out[pos] = self.files.read(info, ordinal, f)
                except _Bad as bad:
                    out[pos] = bad
        return out

    def _sample(self, pos: int) -> DecodedSample | tuple[str, str, str]:
        """Decoded sample at emitted position ``pos``, or (key, shard, reason) when it is bad."""
        raw = self._load_block(pos // self.block)[pos]
        index, ordinal = plan.locate(int(self.stream[pos]), self.starts)
        shard = self.shards[index].file
        if isinstance(raw, _Bad):  # key unknown past a tar's cut: logged as "#<ordinal in shard>"
            known = self.files.index(self.shards[index])[0]
            return (known[ordinal][0] if ordinal < len(known) else f"#{ordinal}"), shard, str(raw)
        try:
            return decode(raw[0], shard, raw[1])
        except _Bad as bad:
            return raw[0], shard, str(bad)

    def _donor(self, pos: int) -> DecodedSample:
        """A good sample to copy into filler slots: the last good one, else the next good one ahead."""
        if self.last_good is not None:
            return self.last_good
        for p in range(pos, len(self.stream)):
            if self.stream[p] != plan.PAD and isinstance(s := self._sample(p), DecodedSample):
                return s
        for info in self.shards:  # nothing real left to this worker (an eval rank of pads): any good sample
            if self.files.check(info) is None:
                with open(self.files.path(info), "rb") as f:
                    for ordinal in range(info.num_samples):
                        try:
                            key, members = self.files.read(info, ordinal, f)
                            return decode(key, info.file, members)
                        except _Bad:
                            continue
        raise DataError(f"split '{self.split}': this loader worker found no readable sample to fill "
                        f"its batches with; {self._advice()}")

    def _advice(self) -> str:
        first = "; ".join(f"{k} in {s}: {r}" for k, s, r in self.skipped[:3])
        return (f"first bad: {first or 'none'}. Check the shards (`rrg shards build` again, or "
                f"data.verify=checksum to find corrupt shards) or raise data.max_skip_fraction")

    def _skip(self, bad: tuple[str, str, str]) -> None:
        self.skipped.append(bad)
        if len(self.skipped) > self.max_skip * self.planned:
            raise DataError(
                f"split '{self.split}': {len(self.skipped)} bad samples skipped in one loader worker, more "
                f"than data.max_skip_fraction={self.max_skip} of its {self.planned} planned samples; "
                f"{self._advice()}")

    def batch(self, lo: int) -> dict:
        """Stage 8: the batch at emitted positions ``[lo, lo + batch_size)``."""
        picked: list[Optional[DecodedSample]] = []
        skipped_here: list[tuple[str, str, str]] = []
        for pos in (range(lo, lo + self.bs) if self.buckets is None else self.buckets.positions(lo)):
            s = self._sample(pos) if self.stream[pos] != plan.PAD else None
            if isinstance(s, tuple):
                self._skip(s)
                skipped_here.append(s)
                s = None
            picked.append(s)
        good = [s for s in picked if s is not None]
        donor = good[0] if good else self._donor(lo + self.bs)
        self.last_good = good[-1] if good else self.last_good or donor
        built = [self.builder(s or donor) for s in picked]
        for item, s in zip(built, picked):  # a builder returns one row per study, or a list (fan-out)
            for row in (item if isinstance(item, list) else [item]):
                row["sample_weight"] = float(row.get("sample_weight", 1.0)) * float(s is not None)
        batch = self.collate(built)
        if "sample_weight" not in batch or len(batch["sample_weight"]) != len(picked):
            batch["study_weight"] = [float(s is not None) for s in picked]  # a list: never a model input
        if "sample_weight" not in batch:
            batch["sample_weight"] = torch.tensor(batch["study_weight"])
        batch["keys"] = [(s or donor).key for s in picked]
        batch["skipped"] = skipped_here
        return batch


class _RankStream(IterableDataset):
    """What each DataLoader worker runs: its logical worker's remaining batches of the current segment."""

    def __init__(self, loader: "ShardLoader"):
        self.shards, self.root, self.verify = loader.shards, str(loader.manifest.root), loader.verify
        self.sidecars = loader.manifest.sidecars
        self.order = loader._orders()[-1]
        self.segments, self.segment = loader.segments, len(loader.segments) - 1
        self.rank, self.seed, self.epoch, self.mode = loader.rank, loader.seed, loader.epoch, loader.mode
        self.builder, self.collate = loader.builder, loader.collate
        self.max_skip, self.split = loader.max_skip_fraction, loader.split
        self.bucket = loader.bucket_by_length and loader.mode == "train"

    def __iter__(self) -> Iterator[dict]:
        seg = self.segments[-1]
        info = get_worker_info()
        # DataLoader worker i is polled for batch consumed + i first, so it plays logical worker (consumed + i) % W
        worker = ((info.id if info else 0) + seg.consumed) % seg.streams
        stream = plan.worker_stream(self.order, self.rank, worker, seg, seed=self.seed, epoch=self.epoch,
                                    segment=self.segment, mode=self.mode)
        # a streamed shard set keeps the shards of about one shuffle block of this worker's slots
        keep = -(-seg.shuffle_buffer * seg.streams // max(1, min(s.num_samples for s in self.shards))) + 2
        files = ShardFiles(self.root, self.verify, self.sidecars, keep=keep)
        reader = _WorkerReader(stream, self.shards, files, block=seg.shuffle_buffer,
                               batch_size=seg.batch_size, builder=self.builder, collate=self.collate,
                               max_skip=self.max_skip, split=self.split,
                               bucket_seed=(self.seed, self.epoch, self.segment, self.rank, worker) if self.bucket else None)
        start = plan.batches_before(seg.consumed, worker, seg.streams) * seg.batch_size
        for lo in range(start, len(stream), seg.batch_size):
            yield reader.batch(lo)


# ------------------------------------------------------------ the rank's loader
class ShardLoader:
    """Batches of one rank; see the module docstring for the plan, epochs, resume and bad-input policy."""

    def __init__(self, manifest: Manifest, split: str, *, rank: int, world_size: int, batch_size: int, seed: int,
                 num_workers: int, shuffle_buffer: int, mode: Literal["train", "eval"] = "train",
                 builder: Optional[Builder] = None, collate: Optional[Collate] = None, verify: str = "checksum",
                 max_skip_fraction: float = 0.01, prefetch_factor: int = 2, bucket_by_length: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if mode not in ("train", "eval") or verify not in ("checksum", "size", "none") or min(
                batch_size, shuffle_buffer, num_workers + 1) < 1:
            raise ValueError(f"bad loader arguments: mode={mode!r} (train|eval), verify={verify!r} (checksum|size|"
                             f"none), batch_size={batch_size}, shuffle_buffer={shuffle_buffer} (>= 1), "
                             f"num_workers={num_workers} (>= 0)")
        self.manifest, self.split, self.shards = manifest, split, manifest.split_shards(split)
        self.rank, self.world_size, self.batch_size, self.seed = rank, world_size, batch_size, seed
        self.num_workers, self.shuffle_buffer, self.mode = num_workers, shuffle_buffer, mode
        self.builder, self.collate = builder or default_builder, collate or default_collate
        self.verify, self.max_skip_fraction, self.prefetch_factor = verify, max_skip_fraction, prefetch_factor
        self.bucket_by_length = bucket_by_length  # train mode: similar-length batches (shards/bucketing.py)
        self.skipped, self.skip_log = 0, []
        self._cache: tuple[Any, list[np.ndarray]] = (None, [])
        self.set_epoch(0)

    def _fresh_segment(self) -> plan.Segment:
        return plan.Segment(self.world_size, self.num_workers, self.batch_size, self.shuffle_buffer)

    def _orders(self) -> list[np.ndarray]:
        key = (self.epoch, tuple(self.segments[:-1]))
        if self._cache[0] != key:
            counts = [s.num_samples for s in self.shards]
            self._cache = (key, plan.segment_orders(counts, self.segments, seed=self.seed, epoch=self.epoch,
                                                    mode=self.mode))
        return self._cache[1]

    def _segment_batches(self) -> int:
        return plan.num_batches(len(self._orders()[-1]), self.segments[-1], self.mode)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning with the current world size / workers / batch size."""
        self.epoch, self.segments = int(epoch), [self._fresh_segment()]
        n = len(self._orders()[0])
        if self._segment_batches() == 0:
            raise DataError(f"split '{self.split}' has {n} samples: not one batch of {self.batch_size} per rank "
                            f"for world_size {self.world_size}; lower the batch size or build more data")
        per_rank = self._segment_batches() * self.batch_size
        if self.mode == "train" and self.rank == 0 and n - per_rank * self.world_size:
            log.info("split %s epoch %d: %d of %d samples not used this epoch (%d remainder of world_size %d, "
                     "the rest partial last batches)", self.split, self.epoch, n - per_rank * self.world_size, n,
                     n % self.world_size, self.world_size)

    @property
    def dropped(self) -> int:
        """Samples of the current segment's order that no rank will see this epoch (train mode drop)."""
        used = self._segment_batches() * self.segments[-1].batch_size * self.segments[-1].world_size
        return 0 if self.mode == "eval" else len(self._orders()[-1]) - used

    def __len__(self) -> int:
        return sum(s.consumed for s in self.segments[:-1]) + self._segment_batches()

    def __iter__(self) -> Iterator[dict]:
        if self.segments[-1].consumed >= self._segment_batches():
            self.set_epoch(self.epoch + 1)
        # own generator: a new iterator must not draw from the global RNG (resumed dropout would differ)
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, self.rank)) % 2**62)
        dl = DataLoader(_RankStream(self), batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                        prefetch_factor=self.prefetch_factor if self.num_workers else None, generator=gen)
        batches = iter(dl)
        try:
            for batch in batches:
                for key, shard, why in batch["skipped"]:
                    log.warning("skipped sample %s of shard %s: %s", key, shard, why)
                self.skipped += len(batch["skipped"])
                self.skip_log.extend(batch["skipped"])
                self.segments[-1] = replace(self.segments[-1], consumed=self.segments[-1].consumed + 1)
                yield batch
        finally:
            # stop workers now: left to the gc after an error, each waits out a 5 s join timeout
            getattr(batches, "_shutdown_workers", lambda: None)()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "segments": [s.to_json() for s in self.segments],
                "fingerprint": self.manifest.dataset_fingerprint, "split": self.split, "seed": self.seed, "mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.manifest.dataset_fingerprint:
            raise ManifestError(
                f"loader state was saved for shard set {state['fingerprint'][:12]}..., but "
                f"{self.manifest.root} holds {self.manifest.dataset_fingerprint[:12]}...: the shards were rebuilt or "
                f"data.shards_dir changed; resume with the original shards or start a fresh run")
        for name in ("split", "seed", "mode"):
            if name in state and state[name] != getattr(self, name):
                raise ValueError(f"loader state has {name}={state[name]!r}, this loader {getattr(self, name)!r}")
        segs = [plan.Segment(**{"shuffle_buffer": self.shuffle_buffer, **s}) for s in state["segments"]]
        self.epoch, self.segments = int(state["epoch"]), segs
        last, fresh = segs[-1], self._fresh_segment()
        if replace(last, consumed=0) == fresh or self.segments[-1].consumed >= self._segment_batches():
            return  # same layout: continue exactly; or the epoch is over: __iter__ starts the next one
        self.segments = (segs[:-1] if last.consumed == 0 else segs) + [fresh]
        log.info("loader restored with a new layout %s: the epoch's %d remaining samples are re-split",
                 self.segments[-1], len(self._orders()[-1]))


def make_loader(data_cfg: DataConfig, split: str, *, rank: int, world_size: int, batch_size: int, seed: int,
                builder: Optional[Builder] = None, collate: Optional[Collate] = None,
                mode: Literal["train", "eval"] = "train") -> ShardLoader:
    """The rank's loader for ``split`` as the data config says (manifest at ``data_cfg.shards_dir``)."""
    return ShardLoader(load_manifest(data_cfg.shards_dir, cache=data_cfg.cache), split, rank=rank,
                       world_size=world_size, batch_size=batch_size, seed=seed, num_workers=data_cfg.loader_workers,
                       shuffle_buffer=data_cfg.shuffle_buffer, mode=mode, builder=builder, collate=collate,
                       verify=data_cfg.verify, max_skip_fraction=data_cfg.max_skip_fraction,
                       prefetch_factor=data_cfg.prefetch_factor, bucket_by_length=data_cfg.bucket_by_length)


def iter_decoded(manifest: Manifest, shard: ShardInfo, image_skips: Any = None) -> Iterator[DecodedSample]:
    """Every sample of one shard in order, decoded, sidecars joined; a bad one raises DataError naming it.

    ``image_skips`` (a ``SkipLog``): a sample whose image file cannot be used (empty, over the pixel
    limit, truncated, not an image) is counted there by reason and left out instead."""
    files = ShardFiles(str(manifest.root), "checksum", manifest.sidecars)
    why = files.check(shard)
    if why is not None:
        raise DataError(f"shard {shard.file}: {why}")
    with open(files.path(shard), "rb") as f:
        for ordinal in range(shard.num_samples):
            try:
                key, members = files.read(shard, ordinal, f)
                sample = decode(key, shard.file, members)
            except _Bad as bad:
                if image_skips is not None and bad.reason:
                    image_skips.add(bad.reason, f"shard {shard.file}, sample #{ordinal}: {bad}")
                    continue
                raise DataError(f"shard {shard.file}, sample #{ordinal}: {bad}") from None
            yield sample
