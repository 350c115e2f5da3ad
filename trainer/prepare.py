"""Driver-side preparation of a training run, shared by every cluster backend (Ray, torchrun, SLURM).

It happens once, before any worker starts: demo shards are built
if the demo source is configured and none exist, the tokenizer is trained (or
loaded) and saved with the run, and the resolved config is written next to the
outputs.  Workers then only read.

Preemption: SIGTERM or SIGUSR1 to this process writes ``<output_dir>/STOP``;
every rank sees it at the next step, a checkpoint is published and the command
exits with status 75 (EX_TEMPFAIL: "try again"), so a requeued job resumes with
``checkpoint.resume: auto`` and loses no step.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from configs.parallel import TaskPool
from trainer.config import RunConfig

EXIT_PREEMPTED = 75
STORAGE_ENV_PREFIXES = ("AWS_", "FSSPEC_", "S3FS_")


def worker_env(cfg: RunConfig) -> dict[str, str]:
    """Environment every worker needs (Ray workers do not inherit the driver's reliably)."""
    env = {
        "DS_ACCELERATOR": "cuda" if cfg.cluster.use_gpu else "cpu",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DIR": os.environ.get("WANDB_DIR") or str(Path(cfg.output_dir).resolve()),
        "OMP_NUM_THREADS": str(max(1, int(cfg.cluster.cpus_per_worker))),
    }
    for key in ("WANDB_MODE", "WANDB_API_KEY", "TORCH_EXTENSIONS_DIR", "HF_HOME", "PYTHONPATH",
                "RRG_JOB_ID", "RRG_CACHE_DIR", "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST",
                "RRG_CHAOS_DIR", "RRG_FAMILY_PATH", "RRG_PASS_PATH"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    # object storage (shards/storage.py): credentials, region, endpoint (AWS_ENDPOINT_URL[_S3]), profile
    # and CA files for boto, and fsspec's own FSSPEC_<PROTOCOL>_<KWARG> settings.  A worker node's own
    # value wins (train_worker only sets what is unset there).
    for key, value in os.environ.items():
        if key.startswith(STORAGE_ENV_PREFIXES) and value:
            env[key] = value
    return env


def demo_shards_missing(cfg: RunConfig) -> bool:
    """The demo source is configured and its shards have not been made yet (no manifest)."""
    from shards.storage import exists, is_remote, join

    shards = cfg.data.shards_dir
    built = exists(join(shards, "manifest.json")) if is_remote(shards) else (Path(shards) / "manifest.json").exists()
    return not built and cfg.data.source.adapter == "demo"


def ensure_shards(cfg: RunConfig, pool: Optional[TaskPool] = None):
    """The run's shard manifest; demo shards are made on first use, other sources must be built.

    Only a directory with no manifest at all is built: a manifest that is there but
    disagrees with itself or its shards is refused (its error names the file), never
    silently rebuilt over.
    """
    from shards.manifest import load_manifest

    if not demo_shards_missing(cfg):
        return load_manifest(cfg.data.shards_dir, cache=cfg.data.cache)
    print(f"rrg: no shards at {cfg.data.shards_dir}: building the demo dataset first", flush=True)
    from shards.writer import build_from_config

    return build_from_config(cfg.data, seed=cfg.seed, pool=pool)


def prepare_tokenizer(cfg: RunConfig, manifest) -> str:
    """Train (first run) or reuse (resume) the run's tokenizer; returns its directory."""
    from modeling.family import build_family
    from shards.textpass import iter_verified_records

    tok_dir = Path(cfg.output_dir) / "tokenizer"
    family = build_family(cfg.model)
    if tok_dir.is_dir() and any(tok_dir.iterdir()):
        family.tokenizer(None, save_dir=str(tok_dir))  # fail early if unreadable
        return str(tok_dir)
    texts = family.tokenizer_texts(iter_verified_records(  # checked like the workers' reads
        manifest, cfg.data.train_split, cfg.data.verify, cfg.data.max_skip_fraction))
    family.tokenizer(texts, save_dir=str(tok_dir))
    return str(tok_dir)


def _wandb_id(cfg: RunConfig) -> str:
    path = Path(cfg.output_dir) / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    from trainer.logger import new_run_id

    run_id = new_run_id()
    path.write_text(run_id)
    return run_id


_STOPPED_DURING_STARTUP: list[str] = []


def stopped_during_startup() -> bool:
    """True once a stop signal arrived before any worker started (the exit must then be 75: Ray's
    blocking get turns the handler's SystemExit into its own ``SystemExit(1)``)."""
    return bool(_STOPPED_DURING_STARTUP)


def install_stop_handlers(stop_file: Path, started=lambda: True) -> None:
    """SIGTERM/SIGUSR1: ask the workers to checkpoint and stop; before any worker has started
    training (``started()`` false) there is nothing to save, so the command stops at once (75)."""
    def handler(signum, _frame):
        name = signal.Signals(signum).name
        stop_file.write_text(name)
        if not started():
            print(f"rrg: received {name} during start-up: stopping", file=sys.stderr, flush=True)
            _STOPPED_DURING_STARTUP.append(name)
            raise SystemExit(EXIT_PREEMPTED)
        print(f"rrg: received {name}: checkpointing and stopping", file=sys.stderr, flush=True)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, handler)


def check_resume(cfg: RunConfig, manifest) -> None:
    """Before anything is written: the checkpoint to resume is rrg's, intact and compatible."""
    from trainer.checkpoint import CheckpointManager
    from trainer.runguard import check_compatible

    point = CheckpointManager(cfg.checkpoint_dir, rank=0, world_size=1, keep_last=cfg.checkpoint.keep_last,
                              trusted=cfg.checkpoint.trust).resolve(cfg.checkpoint.resume)
    if point is not None:
        if not cfg.checkpoint.trust:  # its hashes were checked by resolve(); now what it would unpickle
            from trainer.safe_load import check_unpickles

            check_unpickles(point.path)
        check_compatible(point.meta, point.path, cfg.to_dict(), manifest.dataset_fingerprint,
                         Path(cfg.output_dir) / "tokenizer")


def stage_remote_checkpoint(cfg: RunConfig) -> None:
    """Before the resume is resolved: an ``s3://`` checkpoint is brought into the local staging dir.

    - ``checkpoint.dir: s3://...`` and ``--resume auto|latest``: the checkpoint the remote ``latest``
      names (complete, every file verified) and, when this output_dir has none yet, the run's
      tokenizer and W&B run id, so a fresh machine with an empty output_dir continues the run;
    - ``--resume none`` over a remote dir holding checkpoints: refused like a local one, or with
      ``--overwrite`` moved aside (``delete``: deleted) remotely;
    - ``--resume s3://.../step_N``: that checkpoint, fetched into ``$RRG_CACHE_DIR/checkpoints``.
    """
    from shards import storage
    from trainer.runguard import RunDirError

    try:
        _stage_remote_checkpoint(cfg)
    except storage.StorageError as err:  # the store kept failing, or 'latest' names a half checkpoint: one line
        raise RunDirError(f"cannot resume from object storage: {err}") from None


def _stage_remote_checkpoint(cfg: RunConfig) -> None:
    from shards import storage
    from trainer.runguard import RunDirError

    out, url, resume = Path(cfg.output_dir), cfg.checkpoint.dir, cfg.checkpoint.resume
    if storage.is_remote(resume):
        name = resume.rstrip("/").rsplit("/", 1)[-1]
        local = storage.cache_root() / "checkpoints" / storage.url_key(resume) / name
        print(f"rrg: fetching checkpoint {resume}", flush=True)
        cfg.checkpoint.resume = str(storage.fetch_checkpoint(resume.rstrip("/"), local))
        return
    if not storage.is_remote(url):
        return
    if resume == "none":
        found = storage.checkpoint_steps(url)
        if found and not cfg.checkpoint.overwrite:
            raise RunDirError(f"--resume none but {url} already holds checkpoints ({', '.join(found[:5])}"
                              f"{' ...' if len(found) > 5 else ''}): use another checkpoint.dir, --resume auto, "
                              f"or --overwrite (moves them aside)")
        if found and cfg.checkpoint.overwrite == "delete":
            storage.clear_checkpoints(url)
            print(f"rrg: --overwrite delete: removed the previous run's checkpoints in {url}", flush=True)
        elif found:
            print(f"rrg: --overwrite: moved the previous run's checkpoints to {storage.move_aside(url)}", flush=True)
        return
    local = Path(cfg.checkpoint_dir)
    fetched = storage.fetch_latest_checkpoint(url, local)
    if fetched is None:
        return
    print(f"rrg: latest checkpoint of {url}: {fetched}", flush=True)
    tok_dir = out / "tokenizer"
    if not (tok_dir.is_dir() and any(tok_dir.iterdir())) and storage.fetch_tokenizer(url, tok_dir):
        print(f"rrg: tokenizer of the run fetched from {url}/tokenizer", flush=True)
    wandb_id = json.loads((fetched / "meta.json").read_text()).get("wandb_id")
    if wandb_id and not (out / "wandb_run_id").is_file():
        (out / "wandb_run_id").write_text(wandb_id)


def remove_partial_outputs(cfg: RunConfig) -> None:
    """What an interrupted run left half-written: checkpoint saves (``.tmp-step_N``), pruned
    checkpoints (``.trash-step_N``) and export staging dirs.  Runs under the run lock only."""
    from trainer.checkpoint import CheckpointManager
    from trainer.export import remove_staging_leftovers

    found = CheckpointManager(cfg.checkpoint_dir, rank=0, world_size=1, keep_last=1).remove_leftovers()
    found += remove_staging_leftovers(Path(cfg.output_dir) / "export")
    if found:
        print(f"rrg: removed what an interrupted run left half-written: {', '.join(p.name for p in found)}",
              flush=True)


def check_run(cfg: RunConfig):
    """The checks of a training run that need only its files, before anything is started or written.

    Writable dirs, run-dir mixing, a remote checkpoint brought in, and (when the shards exist) the
    checkpoint to resume: intact, unpicklable as data, compatible.  The Ray backend runs this before
    Ray comes up, so a run that is refused is refused in seconds.  Returns the shards' manifest, or
    None when demo shards are still to be built (:func:`prepare_run` then checks the resume).
    """
    from shards.manifest import load_manifest
    from shards.storage import is_remote
    from trainer.runguard import check_run_dir, check_writable

    out = Path(cfg.output_dir).resolve()
    cfg.output_dir = str(out)
    if not is_remote(cfg.data.shards_dir):  # s3:// shards are synced by every worker's loader
        cfg.data.shards_dir = str(Path(cfg.data.shards_dir).resolve())
    if cfg.checkpoint.dir and not is_remote(cfg.checkpoint.dir):
        cfg.checkpoint.dir = str(Path(cfg.checkpoint.dir).resolve())
    if cfg.checkpoint.resume not in ("auto", "none", "latest") and not is_remote(cfg.checkpoint.resume):
        cfg.checkpoint.resume = str(Path(cfg.checkpoint.resume).resolve())
    check_writable(out, "output_dir")
    check_writable(cfg.checkpoint_dir, "checkpoint.dir")
    check_run_dir(out, Path(cfg.checkpoint_dir), cfg.checkpoint.resume, cfg.checkpoint.overwrite)
    stage_remote_checkpoint(cfg)
    if demo_shards_missing(cfg):
        return None
    manifest = load_manifest(cfg.data.shards_dir, cache=cfg.data.cache)
    check_resume(cfg, manifest)
    return manifest


def prepare_run(cfg: RunConfig, pool: Optional[TaskPool] = None, *, checked: bool = False,
                manifest=None) -> dict[str, Any]:
    """Driver-side preparation shared by the Ray and torchrun paths; returns the workers' loop config.

    Order matters: every check (writable dirs, run-dir mixing, checkpoint trust and
    compatibility) runs before the first byte is written into the run directory.  ``checked``:
    :func:`check_run` already ran on this ``cfg`` and returned ``manifest``.
    """
    if not checked:
        manifest = check_run(cfg)
    if manifest is None:  # demo shards, made on first use
        manifest = ensure_shards(cfg, pool)
        check_resume(cfg, manifest)
    out = Path(cfg.output_dir)
    remove_partial_outputs(cfg)
    cfg.dump(out / "config.yaml")
    tokenizer_dir = prepare_tokenizer(cfg, manifest)
    stop_file = out / "STOP"
    stop_file.unlink(missing_ok=True)
    (out / "result.json").unlink(missing_ok=True)
    (out / "FATAL.json").unlink(missing_ok=True)
    shutil.rmtree(out / "pids", ignore_errors=True)  # "started" = a worker wrote its pid in this run
    env = worker_env(cfg)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    from trainer.runguard import tokenizer_hash

    return {"config": cfg.to_dict(), "tokenizer_dir": tokenizer_dir, "stop_file": str(stop_file),
            "tokenizer_sha256": tokenizer_hash(Path(tokenizer_dir)),
            "wandb_id": _wandb_id(cfg), "env": env}


def finish_run(cfg: RunConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    result = json.loads((out / "result.json").read_text())
    (out / "STOP").unlink(missing_ok=True)
    print(f"rrg: trained to step {result['step']}" + (" (preempted)" if result["preempted"] else ""), flush=True)
    print(f"rrg: checkpoint: {result['checkpoint']}", flush=True)
    if result.get("export"):
        print(f"rrg: exported model: {result['export']}", flush=True)
    if result["preempted"]:
        sys.exit(EXIT_PREEMPTED)
    return result
