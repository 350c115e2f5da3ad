"""``rrg shards build``: read a source through its adapter, write WebDataset shards + manifest.

Two passes:

1. On the driver: ``adapter.entries()`` (cheap), a split for every study
   (the source's, or a stable hash of the patient id so a patient never spans
   splits), and a plan: each split's studies chunked into shards
   ``{split}-{n:06d}.tar`` of ``build.samples_per_shard``.
2. One Ray task per shard: load, preprocess (see ``shards/imageio.py``) and
   pack each study as one sample (member layout: ``shards/records.py``), write
   the tar under a temp name, fsync, rename, then write a sidecar
   ``{file}.info.json``.  Tars use a fixed mtime, so a rebuilt shard is
   byte-identical and the manifest fingerprint does not change.

Studies an adapter cannot use are skipped and counted by reason (while
planning: ``adapter.skips()``; while loading: ``SkipStudy`` in the task, an
unreadable image) and written to ``build_summary.json`` beside the manifest, with
examples naming file and row; past ``build.max_skip_fraction`` the build stops.
A single view the writer cannot use (a DICOM with no pixel data or a transfer
syntax no installed decoder reads: ``shards.dicom.DicomSkip``) is counted as
``view_<reason>``; a study left with no usable view is counted as ``no_usable_view``.
An image file that cannot be used is left out as ``view_<reason>``: ``unreadable_image``,
``empty_image_file``, ``truncated_image``, or ``image_too_large`` (more pixels in its header than
``build.max_image_pixels``; decompression bombs are never decoded: shards/imageio.py); the study is
skipped under that reason when no view, or no frontal view 0, is left.
Each sidecar also records its task's start, wall and CPU seconds (``rrg bench build``
reads them; they are not part of the manifest or its fingerprint).

Re-running is safe: ``build.json`` (written first) pins the adapter and
preprocess settings, and a different config pointed at the same directory is
refused; shards whose tar + sidecar are complete are kept; temp leftovers are
removed.  ``manifest.json`` is published last, atomically.

The ``.json`` record of a sample::

    {"study_id" (original, may hold dots), "patient_id", "split", "key" (sanitised), "index",
     "report": {"text", "findings", "impression"}, "labels": {name: 1.0/0.0/-1.0/null},
     "topics": [...], "meta": {...},
     "views": [{"member": "view0.png", "position", "height", "width", "channels": 1|3,
                "source_dtype", "source_shape"}],
     "masks": {"member": "masks.bin", "encoding", "shape": [C, H, W], "channels", "num_bytes"} | null,
     "kg": {"member": "kg.safetensors", "num_nodes", "num_edges"} | null}
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from configs.parallel import SerialPool, TaskPool
from shards.adapter_kit import SkipLog, SkipStudy
from shards.adapters import make_adapter
from shards.config import BuildConfig, DataConfig
from shards.dicom import DicomSkip
from shards.imageio import DEFAULT_MAX_PIXELS, load_mask, resize_masks
from shards.manifest import Manifest, ManifestError, ShardInfo, file_sha256
from shards.masks import ENCODING, encode_masks
from shards.records import FORMAT_VERSION, Study
from shards.views import encode_view

BUILD_SETTINGS = "build.json"
BUILD_SUMMARY = "build_summary.json"
_TMP_MARK = ".tmp-"
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_KEY = 80  # tar USTAR member names: key + ".view0.png" must stay under 100 bytes


class ShardBuildError(ManifestError):
    """The build cannot proceed safely (settings mismatch, split conflict ...)."""


# ----------------------------------------------------------------------------- small helpers
def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def sample_key(study_id: str) -> str:
    """A webdataset-safe key: no dots or slashes (webdataset splits the extension at the first dot)."""
    return _KEY_UNSAFE.sub("_", study_id)[:_MAX_KEY] or "study"


def build_settings(data_cfg: DataConfig, seed: int) -> dict[str, Any]:
    """What determines the shards' content: recorded in build.json and the manifest."""
    b = data_cfg.build
    return {
        "format_version": FORMAT_VERSION,
        "adapter": {"name": data_cfg.source.adapter, "args": dict(data_cfg.source.args)},
        "preprocess": {
            "image_size": b.image_size, "image_format": b.image_format, "jpeg_quality": b.jpeg_quality,
            "samples_per_shard": b.samples_per_shard, "split_fractions": dict(b.split_fractions),
            "seed": seed, "window": "minmax", "dicom_window": b.dicom_window,
        },
    }


# ----------------------------------------------------------------------------- pass 1: plan
def _hash_split(patient_id: str, seed: int, fractions: dict[str, float]) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()[:8], "big") / 2.0**64
    acc = 0.0
    for name, frac in sorted(fractions.items()):  # canonical order: YAML key order must not matter
        acc += frac
        if u < acc:
            return name
    return list(fractions)[-1]


def assign_splits(entries: list[tuple[str, Optional[str]]], fractions: dict[str, float], seed: int) -> list[str]:
    """One split per study; by patient, so no patient is in two splits."""
    given: dict[str, str] = {}
    for index, (patient, split) in enumerate(entries):
        if split is None:
            continue
        if not _SPLIT_NAME.match(split):
            raise ShardBuildError(f"study {index} (patient '{patient}'): split name '{split}' must match [A-Za-z0-9_]+")
        if given.setdefault(patient, split) != split:
            raise ShardBuildError(
                f"patient '{patient}' appears in two splits ('{given[patient]}' and '{split}', study {index}): "
                f"a patient's studies must all be in one split"
            )
    if not fractions and any(s is None and p not in given for p, s in entries):
        raise ShardBuildError("the source gives no split for some studies and build.split_fractions is empty")
    return [given.get(patient) or _hash_split(patient, seed, fractions) for patient, _ in entries]


def plan_shards(splits: list[str], samples_per_shard: int) -> list[dict[str, Any]]:
    """[{file, split, indices}] in split order of first appearance, each split chunked in index order."""
    by_split: dict[str, list[int]] = defaultdict(list)
    for index, split in enumerate(splits):
        by_split[split].append(index)
    plan = []
    for split, indices in by_split.items():
        for n, start in enumerate(range(0, len(indices), samples_per_shard)):
            plan.append({"file": f"{split}-{n:06d}.tar", "split": split,
                         "indices": indices[start:start + samples_per_shard]})
    return plan


# ----------------------------------------------------------------------------- pass 2: one study
def _frontal(position: Optional[str]) -> bool:
    return str(position or "").upper() in ("PA", "AP", "FRONTAL")


def _study_masks(study: Study, height: int, width: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Optional[np.ndarray], list[str]]:
    """bool (C, height, width) aligned with the stored view 0, from arrays or mask image files."""
    if study.masks is not None:
        masks, channels = np.asarray(study.masks, dtype=bool), list(study.mask_channels)
        if masks.ndim != 3 or len(channels) != masks.shape[0]:
            raise ValueError(f"study {study.study_id}: masks {masks.shape} vs channels {channels}")
        return resize_masks(masks, height, width), channels
    if study.mask_paths:
        channels = list(study.mask_paths)
        stack = [resize_masks(load_mask(study.mask_paths[c], max_pixels)[None], height, width)[0] for c in channels]
        return np.stack(stack), channels
    return None, []


def pack_study(study: Study, index: int, split: str, key: str, build: BuildConfig,
               skipped: Optional[list[DicomSkip]] = None) -> tuple[dict[str, bytes], int]:
    """A Study -> one webdataset sample (member ext -> bytes) and its mask byte count.

    An unusable DICOM view is appended to ``skipped`` and left out; a study left with
    no view raises the last DicomSkip.  An image file that cannot be decoded (PIL's
    OSError) is left out too, counted as ``view_unreadable_image`` (appended to
    ``skipped`` only if the study is kept); when no view is left, or the frontal
    view 0 was the unreadable one and what remains is not frontal (a lateral must
    never become view 0), the study raises OSError (``unreadable_image``).
    """
    sample: dict[str, Any] = {"__key__": key}
    views = []
    if not study.views:
        raise ValueError(f"study {study.study_id} has no views")
    last_skip: Optional[DicomSkip] = None
    unreadable: list[DicomSkip] = []
    for view in study.views:
        try:
            data, ext, image, facts = encode_view(view.image if view.image is not None else view.path, build)
        except DicomSkip as skip:
            last_skip = skip
            if skipped is not None:
                skipped.append(skip)
            continue
        except OSError as err:  # ImageSkip (empty, too large, truncated, unreadable) or another OSError
            if view.image is not None:
                raise
            reason = getattr(err, "reason", "unreadable_image")
            unreadable.append(DicomSkip(str(view.path), reason, f"{view.position}: {getattr(err, 'detail', err)}"))
            continue
        i = len(views)
        sample[f"view{i}.{ext}"] = data
        views.append({"member": f"view{i}.{ext}", "position": view.position, "height": image.shape[0],
                      "width": image.shape[1], "channels": 1 if image.ndim == 2 else 3, **facts})
    if unreadable and (not views or (_frontal(study.views[0].position) and not _frontal(views[0]["position"]))):
        err = OSError("; ".join(map(str, unreadable)) + ("" if not views else " (its frontal view: no frontal left)"))
        err.reason = unreadable[0].reason  # the study is counted under its (first) unusable view's reason
        raise err
    if not views:
        raise last_skip
    if skipped is not None:
        skipped.extend(unreadable)
    masks, channels = _study_masks(study, views[0]["height"], views[0]["width"], build.max_image_pixels)
    mask_meta, mask_bytes = None, 0
    if masks is not None:
        sample["masks.bin"] = encode_masks(masks)
        mask_bytes = len(sample["masks.bin"])
        mask_meta = {"member": "masks.bin", "encoding": ENCODING, "shape": list(masks.shape),
                     "channels": channels, "num_bytes": mask_bytes}
    kg_meta = None
    if study.kg is not None:
        from safetensors.numpy import save

        sample["kg.safetensors"] = save({k: np.ascontiguousarray(v) for k, v in study.kg.items()})
        kg_meta = {"member": "kg.safetensors", "num_nodes": int(len(study.kg["node_ids"])),
                   "num_edges": int(np.shape(study.kg["edge_index"])[-1])}
    tensors_meta = {}
    for name, group in sorted(study.tensors.items()):  # named per-study tensors (float16 / uint8 ...)
        from safetensors.numpy import save

        if name in ("kg", "masks") or not name.isidentifier():
            raise ValueError(f"study {study.study_id}: tensor group name {name!r} is reserved or not an identifier")
        sample[f"{name}.safetensors"] = save({k: np.ascontiguousarray(v) for k, v in group.items()})
        tensors_meta[name] = {k: {"dtype": str(np.asarray(v).dtype), "shape": list(np.shape(v))} for k, v in group.items()}
    record = {
        "study_id": study.study_id, "patient_id": study.patient_id, "split": split, "key": key, "index": index,
        "report": {"text": study.report, "findings": study.findings, "impression": study.impression},
        "labels": study.labels, "label_set": study.label_set, "topics": study.topics, "views": views,
        "masks": mask_meta, "kg": kg_meta, "tensors": tensors_meta, "meta": study.meta,
    }
    sample["json"] = json.dumps(record, default=_json_default).encode()
    return sample, mask_bytes


# ----------------------------------------------------------------------------- pass 2: one shard
def _sidecar(out_dir: Path, file: str) -> Path:
    return out_dir / f"{file}.info.json"


def shard_is_complete(out_dir: Path, shard: dict[str, Any], settings_digest: str) -> Optional[dict[str, Any]]:
    """The sidecar info if the shard's tar + sidecar exist and match this plan and settings, else None."""
    tar, side = out_dir / shard["file"], _sidecar(out_dir, shard["file"])
    if not (tar.is_file() and side.is_file()):
        return None
    try:
        info = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = (info.get("num_bytes") == tar.stat().st_size and info.get("settings") == settings_digest
          and info.get("plan") == _digest(shard["indices"]))
    return info if ok else None


def write_shard(adapter: Any, shard: dict[str, Any], out_dir: str, build: BuildConfig,
                settings_digest: str) -> dict[str, Any]:
    """Build one shard (runs as a Ray task): tar under a temp name, fsync, rename, sidecar."""
    from webdataset import TarWriter

    started, cpu0 = time.time(), time.process_time()
    out = Path(out_dir)
    final = out / shard["file"]
    tmp = out / f"{shard['file']}{_TMP_MARK}{os.getpid()}"
    used: set[str] = set()
    mask_total, written, skipped = 0, 0, SkipLog()
    view_sources: dict[str, int] = {}
    try:
        with open(tmp, "wb") as f:
            writer = TarWriter(f, encoder=False, mtime=0.0)  # fixed mtime: rebuilds are byte-identical
            for index in shard["indices"]:
                try:
                    study = adapter.load(index)
                except SkipStudy as skip:
                    skipped.add(skip.reason, skip.where)
                    continue
                key = sample_key(study.study_id)
                if key in used:  # two ids that sanitise alike: keep keys unique within the shard
                    key = f"{key[:_MAX_KEY - 9]}_{index:08d}"
                view_skips: list[DicomSkip] = []
                try:
                    sample, mask_bytes = pack_study(study, index, shard["split"], key, build, view_skips)
                except DicomSkip:
                    skipped.add("no_usable_view", f"study {study.study_id}: {'; '.join(map(str, view_skips))}")
                    continue
                except OSError as err:  # an unusable image file (shards/imageio.py ImageSkip: reason counted)
                    skipped.add(getattr(err, "reason", "unreadable_image"), f"study {study.study_id}: {err}")
                    continue
                finally:
                    for skip in view_skips:
                        skipped.add(f"view_{skip.reason}", str(skip))
                used.add(key)
                writer.write(sample)
                mask_total += mask_bytes
                written += 1
                for source in study.meta.get("view_sources") or ():  # where view positions came from
                    view_sources[source] = view_sources.get(source, 0) + 1
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    info = asdict(ShardInfo(file=shard["file"], split=shard["split"], num_samples=written,
                            num_bytes=final.stat().st_size, sha256=file_sha256(final)))
    info.update(mask_bytes=mask_total, skipped=skipped.to_json(), plan=_digest(shard["indices"]), settings=settings_digest,
                view_sources=view_sources,
                task={"start": started, "wall_s": time.time() - started, "cpu_s": time.process_time() - cpu0})
    _atomic_write_json(_sidecar(out, shard["file"]), info)
    return info


# ----------------------------------------------------------------------------- driver
def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix shards built with different settings in one directory."""
    path = out_dir / BUILD_SETTINGS
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ShardBuildError(f"{path} is unreadable ({err}); delete the directory to rebuild") from None
        if recorded != settings:
            diff = [k for k in ("format_version", "adapter", "preprocess") if recorded.get(k) != settings.get(k)]
            raise ShardBuildError(
                f"{out_dir} holds a (partial) build with different {'/'.join(diff)} settings:\n"
                f"  recorded: {json.dumps({k: recorded.get(k) for k in diff}, sort_keys=True)}\n"
                f"  now:      {json.dumps({k: settings[k] for k in diff}, sort_keys=True)}\n"
                f"refusing to mix shards; use another output directory or delete this one"
            )
    else:
        _atomic_write_json(path, settings)


def _remove_leftovers(out_dir: Path) -> int:
    """Temp files of interrupted writers (ours and the manifest's)."""
    stale = [p for p in out_dir.iterdir() if _TMP_MARK in p.name or (p.name.startswith(".manifest.json.")
                                                                     and p.name.endswith(".tmp"))]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _run_tasks(adapter: Any, todo: list[dict[str, Any]], out_dir: Path, build: BuildConfig,
               settings_digest: str, pool: TaskPool,
               fn: Any = None) -> list[dict[str, Any]]:
    """One task per shard on ``pool``, at most ``build.num_tasks`` in flight (0: the pool decides).

    ``fn(adapter, shard, out_dir, build, settings_digest) -> info`` is the task
    (default :func:`write_shard`; the masks pass brings its own).
    """
    from tqdm import tqdm

    infos = []
    bar = tqdm(total=sum(len(s["indices"]) for s in todo), unit=" studies", disable=not build.progress,
               desc=f"shards 0/{len(todo)}", dynamic_ncols=True)
    try:
        items = [(shard, str(out_dir), build, settings_digest) for shard in todo]
        for _, info in pool.map_unordered(fn or write_shard, items, shared=(adapter,), limit=build.num_tasks):
            infos.append(info)
            bar.update(info["num_samples"])
            bar.set_description(f"shards {len(infos)}/{len(todo)}")
    finally:
        bar.close()
    return infos


def _write_summary(out: Path, adapter: Any, entries: list, plan: list[dict[str, Any]],
                   infos: dict[str, dict[str, Any]], build: BuildConfig) -> dict[str, Any]:
    """build_summary.json: studies kept per split, skips by reason with examples; enforce the limit."""
    skips = SkipLog()
    if hasattr(adapter, "skips"):
        skips.merge(adapter.skips().to_json())
    for s in plan:
        skips.merge(infos[s["file"]].get("skipped") or {})
    kept: dict[str, int] = defaultdict(int)
    for s in plan:
        kept[s["split"]] += int(infos[s["file"]]["num_samples"])
    study_skips = sum(n for r, n in skips.counts.items() if not r.startswith(("row_", "view_")))
    total = sum(kept.values()) + study_skips
    sources: dict[str, int] = defaultdict(int)
    for s in plan:
        for source, n in (infos[s["file"]].get("view_sources") or {}).items():
            sources[source] += n
    summary = {"studies": sum(kept.values()), "by_split": dict(kept), "planned": len(entries),
               "skipped_studies": study_skips, "skipped": skips.to_json(),
               **({"view_sources": dict(sorted(sources.items()))} if sources else {}),
               "label_set": str(getattr(adapter, "label_set", "chexpert")),
               "note": "reasons starting with row_ or view_ count source rows or single images, not studies"}
    _atomic_write_json(out / BUILD_SUMMARY, summary)
    if total and study_skips / total > build.max_skip_fraction:
        raise ShardBuildError(f"{study_skips} of {total} studies skipped (> build.max_skip_fraction="
                              f"{build.max_skip_fraction}); reasons and examples in {out / BUILD_SUMMARY}")
    if skips.counts:
        print(f"skipped {study_skips} studies; skips by reason: {dict(skips.counts)} (see {out / BUILD_SUMMARY})")
        for reason, examples in sorted(skips.examples.items()):
            print(f"  e.g. {reason}: {examples[0]}")
    return summary


def build_from_config(data_cfg: DataConfig, seed: int, out_dir: str | None = None,
                      pool: Optional[TaskPool] = None) -> Manifest:
    """Build (or finish building) the shard set described by ``data_cfg``; return its manifest.

    Shards are written as tasks on ``pool`` (the CLI hands in a Ray pool; default: this process).
    An ``s3://`` (fsspec) target is built in a local staging dir, then published: shards, manifest last.
    """
    from shards.buildlock import build_lock
    from shards.storage import cache_root, is_remote, publish_shards

    target = str(out_dir or data_cfg.shards_dir)
    if is_remote(target):
        staging = cache_root() / "build" / hashlib.sha1(target.encode()).hexdigest()[:16]
        manifest = build_from_config(data_cfg, seed, out_dir=str(staging), pool=pool)
        publish_shards(staging, target)
        print(f"published {len(manifest.shards)} shards + manifest to {target}")
        return manifest

    out = Path(out_dir or data_cfg.shards_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with build_lock(out, wait_s=data_cfg.build.lock_wait_s):  # one build per directory
        return _build_locked(data_cfg, seed, out, pool)


def _build_locked(data_cfg: DataConfig, seed: int, out: Path, pool: Optional[TaskPool]) -> Manifest:
    build = data_cfg.build
    settings = build_settings(data_cfg, seed)
    settings_digest = _digest(settings)
    _check_settings(out, settings)
    _remove_leftovers(out)

    t0 = time.time()
    adapter = make_adapter(data_cfg.source.adapter, dict(data_cfg.source.args), seed)
    entries = adapter.entries()
    plan = plan_shards(assign_splits(entries, build.split_fractions, seed), build.samples_per_shard)

    infos: dict[str, dict[str, Any]] = {}
    for shard in plan:
        info = shard_is_complete(out, shard, settings_digest)
        if info is not None:
            infos[shard["file"]] = info
    if infos:
        print(f"{len(infos)} of {len(plan)} shards already complete in {out}")
    todo = [s for s in plan if s["file"] not in infos]
    if todo:
        for info in _run_tasks(adapter, todo, out, build, settings_digest, pool or SerialPool()):
            infos[info["file"]] = info
        elapsed = time.time() - t0
        built = sum(len(s["indices"]) for s in todo)
        print(f"built {len(todo)} shards, {built} studies in {elapsed:.1f}s ({built / max(elapsed, 1e-9):.1f} studies/s)")

    summary = _write_summary(out, adapter, entries, plan, infos, build)
    shards = [ShardInfo(**{k: infos[s["file"]][k] for k in ("file", "split", "num_samples", "num_bytes", "sha256")})
              for s in plan]
    mask_total = sum(int(infos[s["file"]].get("mask_bytes", 0)) for s in plan)
    manifest = Manifest(
        out, settings["adapter"], settings["preprocess"], shards,
        extra={"mask_bytes": {"total": mask_total, "mean_per_study": mask_total / max(len(entries), 1)},
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "label_set": summary["label_set"], "skipped": summary["skipped"]["counts"]},
    )
    manifest.write()
    return manifest
