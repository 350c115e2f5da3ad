"""``rrg train``: prepare the run on the driver, then start N Ray Train workers running DeepSpeed.

Driver-side work happens once, before any worker starts: demo shards are built
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

from launcher.config import RunConfig

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
    for key in ("WANDB_MODE", "WANDB_API_KEY", "TORCH_EXTENSIONS_DIR", "HF_HOME", "PYTHONPATH",
                "RRG_JOB_ID", "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def ensure_shards(cfg: RunConfig):
    """The run's shard manifest; demo shards are made on first use, other sources must be built."""
    from shards.manifest import ManifestError, load_manifest

    try:
        return load_manifest(cfg.data.shards_dir)
    except ManifestError:
        if cfg.data.source.adapter != "demo":
            raise
    print(f"rrg: no shards at {cfg.data.shards_dir}: building the demo dataset first", flush=True)
    from shards.writer import build_from_config

    return build_from_config(cfg.data, seed=cfg.seed)


def prepare_tokenizer(cfg: RunConfig, manifest) -> str:
    """Train (first run) or reuse (resume) the run's tokenizer; returns its directory."""
    from modeling.registry import build_family
    from shards.manifest import iter_json_records

    tok_dir = Path(cfg.output_dir) / "tokenizer"
    family = build_family(cfg.model)
    if tok_dir.is_dir() and any(tok_dir.iterdir()):
        family.tokenizer(None, save_dir=str(tok_dir))  # fail early if unreadable
        return str(tok_dir)
    reports = (r["report"]["text"] for r in iter_json_records(manifest, cfg.data.train_split))
    family.tokenizer(reports, save_dir=str(tok_dir))
    return str(tok_dir)


def _wandb_id(cfg: RunConfig) -> str:
    path = Path(cfg.output_dir) / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    from trainer.logger import new_run_id

    run_id = new_run_id()
    path.write_text(run_id)
    return run_id


def _install_stop_handlers(stop_file: Path) -> None:
    def handler(signum, _frame):
        print(f"rrg: received {signal.Signals(signum).name}: checkpointing and stopping", file=sys.stderr, flush=True)
        stop_file.write_text(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, handler)


def prepare_run(cfg: RunConfig) -> dict[str, Any]:
    """Driver-side preparation shared by the Ray and torchrun paths; returns the workers' loop config."""
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(out)
    from shards.storage import is_remote

    if not is_remote(cfg.data.shards_dir):  # s3:// shards are synced by every worker's loader
        cfg.data.shards_dir = str(Path(cfg.data.shards_dir).resolve())
    if cfg.checkpoint.dir and not is_remote(cfg.checkpoint.dir):
        cfg.checkpoint.dir = str(Path(cfg.checkpoint.dir).resolve())
    if cfg.checkpoint.resume not in ("auto", "none", "latest"):
        cfg.checkpoint.resume = str(Path(cfg.checkpoint.resume).resolve())
    cfg.dump(out / "config.yaml")
    manifest = ensure_shards(cfg)
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


def run_training(cfg: RunConfig, address: Optional[str] = None) -> dict[str, Any]:
    from launcher.ray_util import ensure_ray

    loop_config = prepare_run(cfg)
    ensure_ray(address=address, temp_dir=cfg.cluster.ray_temp_dir)
    from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.worker import train_worker

    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.cluster.num_workers, use_gpu=cfg.cluster.use_gpu,
                                     resources_per_worker={"CPU": cfg.cluster.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.cluster.use_gpu else "gloo"),
        run_config=RayRunConfig(name=cfg.name, storage_path=str(Path(cfg.output_dir) / "ray"),
                                failure_config=FailureConfig(max_failures=cfg.cluster.max_failures)),
    )
    _install_stop_handlers(Path(loop_config["stop_file"]))
    trainer.fit()
    return finish_run(cfg)
