"""What every training worker runs (under Ray Train, or torchrun): build, resume, fit, export.

``train_worker(loop_config)`` is the one entry point; the driver
(launcher/ray_launch.py) passes the resolved config as a plain dict plus the
run's shared paths (tokenizer, stop file) and the W&B run id.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from launcher.config import RunConfig, config_from_dict
from trainer.checkpoint import DS_TAG, CheckpointManager, ResumePoint, set_rng_state
from trainer.export import export_model, save_trainable
from trainer.logger import RunLogger
from trainer.loop import LoopState, Trainer
from trainer.strategy import DeepSpeedStrategy


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from Ray Train's context, else from torchrun's env."""
    try:
        import ray.train

        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    except Exception:  # not inside a Ray Train worker
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class TrainingRun:
    """Everything one rank holds for a run; ``run()`` returns the rank's result summary."""

    def __init__(self, cfg: RunConfig, loop_config: dict[str, Any]):
        from modeling.registry import build_family

        self.cfg, self.loop_config = cfg, loop_config
        self.rank, self.world_size, self.local_rank = dist_info()
        torch.set_num_threads(max(1, int(cfg.cluster.cpus_per_worker)))
        DeepSpeedStrategy.init_distributed(cfg.cluster.use_gpu)
        self.strategy = DeepSpeedStrategy(cfg.train, world_size=self.world_size, rank=self.rank,
                                          use_gpu=cfg.cluster.use_gpu)
        self.family = build_family(cfg.model)
        self.tokenizer = self.family.tokenizer(None, save_dir=loop_config["tokenizer_dir"])
        self._fetch_remote_checkpoint()
        self.checkpoints = CheckpointManager(cfg.checkpoint_dir, rank=self.rank, world_size=self.world_size,
                                             keep_last=cfg.checkpoint.keep_last, barrier=_barrier)
        self.resume: ResumePoint | None = self.checkpoints.resolve(cfg.checkpoint.resume)
        self.wandb_id = loop_config["wandb_id"]

    def _fetch_remote_checkpoint(self) -> None:
        """With ``checkpoint.dir: s3://...`` the latest complete remote checkpoint is staged locally first."""
        from shards.storage import fetch_latest_checkpoint, is_remote

        if is_remote(self.cfg.checkpoint.dir) and self.cfg.checkpoint.resume in ("auto", "latest"):
            if self.local_rank == 0:
                fetch_latest_checkpoint(self.cfg.checkpoint.dir, Path(self.cfg.checkpoint_dir))
            _barrier()

    def _build(self) -> None:
        from modeling.tuning import apply_tuning
        from shards.reader import make_loader

        cfg = self.cfg
        seed_all(cfg.seed)  # same initial weights on every rank
        with self.strategy.model_init_context():
            model = self.family.build_model(self.tokenizer)
        model = apply_tuning(model, cfg.train)
        if cfg.train.activation_checkpointing:
            model.enable_activation_checkpointing()
        self.universal = self.resume is not None and self.resume.world_size != self.world_size
        self.strategy.setup(model, load_universal=self.universal)
        self.loader = make_loader(cfg.data, cfg.data.train_split, rank=self.rank, world_size=self.world_size,
                                  batch_size=cfg.train.micro_batch_size, seed=cfg.seed,
                                  builder=self.family.sample_builder(self.tokenizer, train=True),
                                  collate=self.family.collate(self.tokenizer), mode="train")
        seed_all(cfg.seed * 1000 + self.rank)  # per-rank stream for dropout etc.

    def _restore(self, state: LoopState) -> None:
        point = self.resume
        tag = self.checkpoints.ensure_universal(point) if self.universal else DS_TAG
        self.strategy.load(str(point.path), tag)
        # every rank saved the same reader position (ranks step in lockstep); the reader
        # re-plans the rest of the epoch itself when the world size changed
        client, rng = point.client_state(self.rank if not self.universal else 0)
        self.loader.load_state_dict(client["reader"])
        if self.universal:
            seed_all(self.cfg.seed * 1000 + point.step * 7 + self.rank)  # RNG streams cannot be re-sharded
        else:
            set_rng_state(client["rng"], rng)
        state.step = point.step
        self.wandb_id = point.meta.get("wandb_id") or self.wandb_id

    def save_checkpoint(self, step: int) -> Path:
        cfg = self.cfg

        def write_shards(directory: str, tag: str) -> None:
            self.strategy.save(directory, tag)
            if cfg.train.tuning != "full":  # small, directly loadable trainable weights (adapter + projector)
                save_trainable(self.strategy, Path(directory) / "trainable.safetensors", rank=self.rank,
                               tuning=cfg.train.tuning)

        reader = self.loader.state_dict()
        meta = {"zero_stage": cfg.train.zero_stage, "tuning": cfg.train.tuning, "wandb_id": self.wandb_id,
                "manifest_fingerprint": reader.get("fingerprint"),
                "precision": cfg.train.precision, "config": cfg.to_dict()}
        path = self.checkpoints.save(step, write_shards=write_shards, meta=meta,
                                     client={"reader": reader, "step": step})
        self.logger.note(f"checkpoint: {path}")
        from shards.storage import is_remote, publish_checkpoint

        if is_remote(cfg.checkpoint.dir):
            if self.rank == 0:  # data, then COMPLETE, then latest (the local staging dir must be shared)
                self.logger.note(f"checkpoint published: {publish_checkpoint(path, cfg.checkpoint.dir)}")
            _barrier()
        return path

    def eval_loss(self) -> float:
        """Loss on the first eval-split batch of this rank (weights as trained; a fixed reference point)."""
        from shards.reader import make_loader
        from trainer.loop import to_device

        loader = make_loader(self.cfg.data, self.cfg.data.eval_split, rank=self.rank, world_size=self.world_size,
                             batch_size=self.cfg.train.micro_batch_size, seed=self.cfg.seed,
                             builder=self.family.sample_builder(self.tokenizer, train=True),
                             collate=self.family.collate(self.tokenizer), mode="eval")
        batch = next(iter(loader))
        engine = self.strategy.engine
        engine.eval()
        with torch.no_grad():
            dtype = torch.bfloat16 if self.cfg.train.precision == "bf16" else torch.float32
            loss = float(engine(**to_device(batch, engine.device, dtype)).loss)
        engine.train()
        return loss

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        pid_dir = Path(cfg.output_dir) / "pids"
        pid_dir.mkdir(parents=True, exist_ok=True)
        (pid_dir / f"rank_{self.rank}.pid").write_text(str(os.getpid()))
        self._build()
        state = LoopState()
        if self.resume is not None:
            self._restore(state)
        self.logger = RunLogger(cfg.logging, rank=self.rank, output_dir=cfg.output_dir, run_name=cfg.name,
                                run_id=self.wandb_id, total_steps=cfg.train.max_steps, start_step=state.step,
                                config=cfg.to_dict())
        if self.resume is not None:
            self.logger.note(f"resumed from {self.resume.path} at step {state.step}"
                             + (f" (world size {self.resume.world_size} -> {self.world_size})" if self.universal else ""))
        stop_file = Path(self.loop_config["stop_file"])
        evaluator = None
        if cfg.eval.every_steps:
            from trainer.evaluate import InTrainingEvaluator

            evaluator = InTrainingEvaluator(self, self.logger)
        trainer = Trainer(cfg=cfg, strategy=self.strategy, loader=self.loader, checkpoints=self.checkpoints,
                          logger=self.logger, rank=self.rank, world_size=self.world_size, state=state,
                          save_checkpoint=self.save_checkpoint, stop_requested=stop_file.exists,
                          evaluator=evaluator)
        if state.step < cfg.train.max_steps:
            state = trainer.fit()
        if evaluator is not None:
            evaluator.close()  # rank 0 may still be scoring the last evaluation
        export_dir = None
        if not state.preempted and cfg.checkpoint.export != "none":
            export_dir = export_model(self.strategy, self.family, self.tokenizer, cfg,
                                      Path(cfg.output_dir) / "export", rank=self.rank)
        final_eval_loss = None if state.preempted else self.eval_loss()
        result = {"step": state.step, "preempted": state.preempted, "final_eval_loss": final_eval_loss,
                  "checkpoint": str(self.checkpoints.latest() or ""), "export": str(export_dir or ""),
                  "skipped_samples": getattr(self.loader, "skipped", 0)}
        if self.rank == 0:
            Path(cfg.output_dir, "result.json").write_text(json.dumps(result, indent=1))
        self.logger.finish()
        _barrier()
        return result


def train_worker(loop_config: dict[str, Any]) -> None:
    for key, value in loop_config.get("env", {}).items():
        os.environ.setdefault(key, str(value))
    cfg = config_from_dict(loop_config["config"])
    result = TrainingRun(cfg, loop_config).run()
    try:
        import ray.train

        ray.train.report({k: v for k, v in result.items() if isinstance(v, (int, float))})
    except Exception:  # not under Ray
        pass


def broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-able object on every rank (as UTF-8 bytes, no pickle)."""
    data = torch.tensor(list(json.dumps(obj).encode()) if dist.get_rank() == 0 else [], dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.long)
    dist.broadcast(size, src=0)
    if dist.get_rank() != 0:
        data = torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(data, src=0)
    return json.loads(bytes(data.tolist()).decode())


def gather_json(obj: Any) -> list[Any] | None:
    """Every rank's JSON-able object, as a list on rank 0 (None elsewhere); no pickle."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.long))
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    chunks = [torch.zeros(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(chunks, padded)
    if dist.get_rank() != 0:
        return None
    return [json.loads(bytes(c[: int(n)].tolist()).decode()) for c, n in zip(chunks, sizes)]


def main(argv: list[str] | None = None) -> None:
    """Run the workers without Ray: ``torchrun --nproc_per_node N -m trainer.worker CONFIG [k=v ...]``.

    (srun / torchrun users; the driver-side preparation runs on every rank but
    only rank 0 writes, the others wait for it.)
    """
    import sys

    from launcher.config import load_config
    from launcher.ray_launch import _install_stop_handlers, finish_run, prepare_run

    args = sys.argv[1:] if argv is None else argv
    cfg = load_config(args[0] if args and "=" not in args[0] else None,
                      [a for a in args if "=" in a])
    DeepSpeedStrategy.init_distributed(cfg.cluster.use_gpu)
    loop_config = broadcast_json(prepare_run(cfg) if dist.get_rank() == 0 else None)
    cfg = config_from_dict(loop_config["config"])
    # SIGTERM/SIGUSR1 (srun, torchrun's agent, a SLURM preemption) to any rank: checkpoint at the next step, stop
    _install_stop_handlers(Path(loop_config["stop_file"]))
    TrainingRun(cfg, loop_config).run()
    if dist.get_rank() == 0:
        try:
            finish_run(cfg)
        finally:
            dist.destroy_process_group()
    else:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
