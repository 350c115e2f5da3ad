"""Run logging: console (rank 0, with a progress bar) and Weights & Biases.

W&B runs offline unless a key is configured (``WANDB_API_KEY`` or a netrc
entry); the run id is stored in every checkpoint so a resumed job continues the
same W&B run instead of splitting it.  Report text is never sent unless
``logging.wandb.log_text`` is true: reports can hold patient information.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from trainer.config import LoggingConfig


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def new_run_id() -> str:
    """An 8-character W&B-style run id."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def cluster_metadata(rank: int) -> dict[str, Any]:
    """Where this run executes: rank, node, and the SLURM / Kubernetes job (set by rrg submit's scripts)."""
    import socket

    meta: dict[str, Any] = {"rank": rank, "node": socket.gethostname()}
    for key, env in (("job_id", "RRG_JOB_ID"), ("slurm_job_id", "SLURM_JOB_ID"),
                     ("slurm_restart_count", "SLURM_RESTART_COUNT"), ("slurm_nodes", "SLURM_JOB_NODELIST"),
                     ("k8s_pod", "RRG_K8S_POD")):
        if os.environ.get(env):
            meta[key] = os.environ[env]
    return meta


class RunLogger:
    """Only rank 0 talks; other ranks hold a silent instance so call sites need no branches."""

    def __init__(self, cfg: LoggingConfig, *, rank: int, output_dir: str, run_name: str, run_id: str,
                 total_steps: int, start_step: int, config: dict[str, Any]):
        self.cfg, self.rank, self.active = cfg, rank, rank == 0
        self.run = None
        self.log_path = Path(output_dir) / "train_log.jsonl"
        self.bar = None
        if not self.active:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        mode = wandb_mode(cfg.wandb.mode)
        if mode != "disabled":
            import wandb

            wandb_dir = Path(os.environ.get("WANDB_DIR", Path(output_dir)))
            wandb_dir.mkdir(parents=True, exist_ok=True)
            meta = cluster_metadata(rank)
            # one run per output dir (the id survives requeues and restarts), grouped by the cluster job
            self.run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, name=run_name, id=run_id,
                                  resume="allow", mode=mode, dir=str(wandb_dir), group=meta.get("job_id"),
                                  config={**config, "cluster_meta": meta},
                                  settings=wandb.Settings(console="off", x_disable_stats=True))
        if cfg.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                            dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
        self._t0 = time.time()

    def log(self, step: int, metrics: dict[str, float], per_step_losses: Optional[list[tuple[int, float]]] = None) -> None:
        if not self.active:
            return
        with open(self.log_path, "a") as f:
            for s, loss in per_step_losses or []:
                f.write(json.dumps({"step": s, "loss": loss}) + "\n")
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log({f"train/{k}": v for k, v in metrics.items()}, step=step)
        text = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={metrics.get('loss', float('nan')):.4f}", refresh=False)
            self.bar.write(f"step {step}: {text}")
        else:
            print(f"step {step}: {text}", flush=True)

    def record(self, entry: dict[str, Any]) -> None:
        """One extra JSON line in ``train_log.jsonl`` (e.g. a stage hand-off and its weights digest)."""
        if self.active:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def log_eval(self, step: int, metrics: dict[str, float], samples: Optional[list[dict]] = None) -> None:
        if not self.active:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"step": step, "eval": metrics}) + "\n")
        if self.run is not None:
            payload = {f"eval/{k}": v for k, v in metrics.items()}
            if samples and self.cfg.wandb.log_text:
                import wandb

                table = wandb.Table(columns=["id", "reference", "generated"])
                for s in samples:
                    table.add_data(s["id"], s["reference"], s["generated"])
                payload["eval/samples"] = table
            self.run.log(payload, step=step)
        print(f"eval @ step {step}: " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, text: str) -> None:
        if self.active:
            (self.bar.write if self.bar is not None else print)(text)

    def finish(self) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.close()
        if self.run is not None:
            self.run.finish()
