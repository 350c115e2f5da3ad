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
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from configs.parallel import TaskPool
from trainer.config import RunConfig

EXIT_PREEMPTED = 75


def worker_env(cfg: RunConfig) -> dict[str, str]:
    """Environment every worker needs (Ray workers do not inherit the driver's reliably)."""
    env = {
        "DS_ACCELERATOR": "cuda" if cfg.cluster.use_gpu else "cpu",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DIR": os.environ.get("WANDB_DIR") or str(Path(cfg.output_dir).resolve()),
        "OMP_NUM_THREADS": str(max(1, int(cfg.cluster.cpus_per_worker))),
    }
    for key in ("WANDB_MODE", "WANDB_API_KEY", "TORCH_EXTENSIONS_DIR", "HF_HOME", "PYTHONPATH"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def ensure_shards(cfg: RunConfig, pool: Optional[TaskPool] = None):
    """The run's shard manifest; demo shards are made on first use, other sources must be built."""
    from shards.manifest import ManifestError, load_manifest

    try:
        return load_manifest(cfg.data.shards_dir)
    except ManifestError:
        if cfg.data.source.adapter != "demo":
            raise
    print(f"rrg: no shards at {cfg.data.shards_dir}: building the demo dataset first", flush=True)
    from shards.writer import build_from_config

    return build_from_config(cfg.data, seed=cfg.seed, pool=pool)


def prepare_tokenizer(cfg: RunConfig, manifest) -> str:
    """Train (first run) or reuse (resume) the run's tokenizer; returns its directory."""
    from modeling.family import build_family
    from shards.manifest import iter_json_records

    tok_dir = Path(cfg.output_dir) / "tokenizer"
    family = build_family(cfg.model)
    if tok_dir.is_dir() and any(tok_dir.iterdir()):
        family.tokenizer(None, save_dir=str(tok_dir))  # fail early if unreadable
        return str(tok_dir)
    texts = family.tokenizer_texts(iter_json_records(manifest, cfg.data.train_split))
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


def install_stop_handlers(stop_file: Path) -> None:
    def handler(signum, _frame):
        print(f"rrg: received {signal.Signals(signum).name}: checkpointing and stopping", file=sys.stderr, flush=True)
        stop_file.write_text(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, handler)


def prepare_run(cfg: RunConfig, pool: Optional[TaskPool] = None) -> dict[str, Any]:
    """Driver-side preparation shared by the Ray and torchrun paths; returns the workers' loop config."""
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(out)
    cfg.data.shards_dir = str(Path(cfg.data.shards_dir).resolve())
    if cfg.checkpoint.dir:
        cfg.checkpoint.dir = str(Path(cfg.checkpoint.dir).resolve())
    if cfg.checkpoint.resume not in ("auto", "none", "latest"):
        cfg.checkpoint.resume = str(Path(cfg.checkpoint.resume).resolve())
    cfg.dump(out / "config.yaml")
    manifest = ensure_shards(cfg, pool)
    tokenizer_dir = prepare_tokenizer(cfg, manifest)
    stop_file = out / "STOP"
    stop_file.unlink(missing_ok=True)
    (out / "result.json").unlink(missing_ok=True)
    env = worker_env(cfg)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    return {"config": cfg.to_dict(), "tokenizer_dir": tokenizer_dir, "stop_file": str(stop_file),
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
