"""What every training worker runs (under Ray Train, or torchrun): build, resume, fit, export.

``train_worker(loop_config)`` is the one entry point; the driver
(a cluster backend, e.g. cluster/ray_train.py) passes the resolved config as a plain dict plus the
run's shared paths (tokenizer, stop file) and the W&B run id.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from trainer.config import RunConfig, config_from_dict
from trainer.distributed import broadcast_json
from trainer.checkpoint import DS_TAG, CheckpointManager, ResumePoint
from trainer.export import export_model, save_trainable
from trainer.logger import RunLogger
from trainer.loop import LoopState, Trainer
from trainer.stages import StageCursor
from trainer.stateful import RNGStreams, WandbRun, seed_all
from trainer.strategy import DeepSpeedStrategy


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from Ray Train's context, else from torchrun's env.  A Ray Train worker
    has imported ray.train already; a torchrun worker does not pay ~1.5 s for importing it."""
    ray_train = sys.modules.get("ray.train")
    if ray_train is not None:
        try:
            ctx = ray_train.get_context()
            return ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
        except Exception:  # imported, but not inside a Ray Train worker
            pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class TrainingRun:
    """Everything one rank holds for a run; ``run()`` returns the rank's result summary.

    A run is a list of stages (``train.stages``, or one implicit stage).  Each stage builds the
    family's model afresh, starts from the previous stage's weights (LoRA merged), lets the
    family name what trains (:func:`modeling.tuning.apply_tuning`) and gets its own DeepSpeed
    engine, optimizer and schedule.  The loader keeps its position across stages; only the
    sample builder's target changes.  Checkpoints record the stage, so a resume lands inside it.

    What a resume restores is registered with the checkpoint manager (trainer/stateful.py): the stage
    cursor, loop state (step, skipped samples) and W&B run id in meta.json, the reader position and
    RNG streams per rank.
    """

    def __init__(self, cfg: RunConfig, loop_config: dict[str, Any]):
        from modeling.family import build_family
        from shards.manifest import load_manifest

        self.cfg, self.loop_config = cfg, loop_config
        self.rank, self.world_size, self.local_rank = dist_info()
        torch.set_num_threads(max(1, int(cfg.cluster.cpus_per_worker)))
        DeepSpeedStrategy.init_distributed(cfg.cluster.use_gpu)
        self.strategy = DeepSpeedStrategy(cfg.train, world_size=self.world_size, rank=self.rank,
                                          use_gpu=cfg.cluster.use_gpu)
        self.family = build_family(cfg.model)
        self.tokenizer = self.family.tokenizer(None, save_dir=loop_config["tokenizer_dir"])
        self.assets = load_manifest(cfg.data.shards_dir, cache=cfg.data.cache).assets
        self._fetch_remote_checkpoint()
        self.checkpoints = CheckpointManager(cfg.checkpoint_dir, rank=self.rank, world_size=self.world_size,
                                             keep_last=cfg.checkpoint.keep_last, barrier=_barrier,
                                             trusted=cfg.checkpoint.trust)
        self.resume: ResumePoint | None = self.checkpoints.resolve(cfg.checkpoint.resume)
        self.stage = StageCursor(cfg.train)
        self.loop_state = LoopState()
        self.wandb = WandbRun(loop_config["wandb_id"])
        for name, component in (("stage", self.stage), ("loop", self.loop_state), ("wandb", self.wandb)):
            self.checkpoints.register(name, component, scope="run")
        self.loader = None
        self.logger = None
        self.tokenizer_sha256 = loop_config["tokenizer_sha256"]  # hashed once, by the driver

    def _fetch_remote_checkpoint(self) -> None:
        """With ``checkpoint.dir: s3://...`` the latest complete remote checkpoint is staged locally first."""
        from shards.storage import fetch_latest_checkpoint, is_remote

        if is_remote(self.cfg.checkpoint.dir) and self.cfg.checkpoint.resume in ("auto", "latest"):
            if self.local_rank == 0:
                fetch_latest_checkpoint(self.cfg.checkpoint.dir, Path(self.cfg.checkpoint_dir))
            _barrier()

    def _build_stage(self, index: int, start_state: Optional[dict] = None, load_universal: bool = False,
                     model: Optional[torch.nn.Module] = None) -> None:
        """Model, tuning and engine of stage ``index``; the loader is made once and re-targeted after.

        ``model``: the previous stage's module, adapters merged (an in-place hand-off); else one is built.
        """
        from modeling.tuning import apply_tuning, trainable_summary
        from shards.reader import make_loader

        cfg, stage = self.cfg, self.stage.stages[index]
        seed_all(cfg.seed)  # same initial weights on every rank
        if model is None:
            with self.strategy.model_init_context():
                model = self.family.build_model(self.tokenizer, self.assets)
        else:
            model.rrg_tuning_applied = False  # the next stage's tuning replaces the last one's
        if start_state is None and index == 0 and cfg.model.init_from:
            start_state = init_state(cfg.model.init_from)
        if start_state is not None:
            load_plain_state(self.strategy, model, start_state, where=f"stage '{stage.name}'")
        groups = apply_tuning(model, self.family, stage.spec(cfg.train.lora))
        if cfg.train.activation_checkpointing:
            self.family.enable_activation_checkpointing(model)
        self.strategy.setup(model, groups=groups, lr=stage.lr, steps=stage.steps, load_universal=load_universal)
        self.stage.index = index
        builder = self.family.sample_builder(self.tokenizer, "train", stage.target)
        if self.loader is None:
            self.loader = make_loader(cfg.data, cfg.data.train_split, rank=self.rank, world_size=self.world_size,
                                      batch_size=cfg.train.micro_batch_size, seed=cfg.seed, builder=builder,
                                      collate=self.train_collate(model), mode="train")
            # restored in this order: the reader, then the RNG streams last
            self.checkpoints.register("reader", self.loader)
            self.checkpoints.register("rng", RNGStreams(cfg.seed, self.rank))
        else:
            self.loader.builder = builder
        seed_all(cfg.seed * 1000 + self.rank + 7919 * index)  # per-rank, per-stage stream for dropout etc.
        if self.rank == 0:
            print(f"rrg: stage {index + 1}/{len(self.stage.stages)} '{stage.name}' (target {stage.target}): "
                  f"{trainable_summary(model)}", flush=True)

    def train_collate(self, model: torch.nn.Module):
        """The family's collate; with ``train.packing.enabled`` followed by packing (modeling/packing.py)."""
        collate = self.family.collate(self.tokenizer)
        packing = self.cfg.train.packing
        if not packing.enabled:
            return collate
        from modeling.packing import packing_collate
        from modeling.tokenizer import image_token_id

        if not self.family.supports_packing:
            raise ValueError(f"train.packing: family '{self.family.name}' takes no packed batches (see "
                             f"modeling/packing.py): set train.packing.enabled=false")
        n = self.family.num_image_tokens(model)
        if n <= 0:
            raise ValueError("train.packing needs a vision encoder with a known number of patch tokens")
        return packing_collate(collate, packing, image_token_id(self.tokenizer), n)

    def _next_stage(self) -> None:
        """Hand the trained weights to the next stage in place: the same module, its LoRA merged into the base
        weights one layer at a time, re-tuned and wrapped by a new engine.  No rank ever holds a second copy of
        the model (ZeRO-3 partitions stay partitioned)."""
        model = self.strategy.module
        self.strategy.merge_lora_in_place(model)
        digest = self.strategy.weights_digest(model) if self.logger is not None else ""
        self.strategy.teardown()
        self._build_stage(self.stage.index + 1, model=model)
        if self.logger is not None:
            name = self.stage.current.name
            # the digest lets a test (or a user) check the hand-off against the previous stage's last checkpoint
            self.logger.record({"stage_start": name, "step": self.stage.start(),
                                "start_weights_sha256": digest})
            self.logger.note(f"stage '{name}' starts from the previous stage's weights (sha256 {digest[:12]})")

    def _restore(self) -> None:
        point = self.resume
        self.universal = point.world_size != self.world_size
        self.checkpoints.restore(point, ["stage"])  # the stage to build
        self._build_stage(self.stage.index, load_universal=self.universal)
        tag = self.checkpoints.ensure_universal(point) if self.universal else DS_TAG
        self.strategy.load(str(point.path), tag, trusted=self.cfg.checkpoint.trust)
        # loop state, W&B id, then per rank the reader and RNG streams (another world size: rank 0's
        # reader position, re-planned by the reader; RNG streams seeded anew)
        self.checkpoints.restore(point, skip=("stage",))

    def save_checkpoint(self, step: int) -> Path:
        cfg = self.cfg
        tuning = self.stage.current.tuning

        def write_shards(directory: str, tag: str) -> None:
            self.strategy.save(directory, tag)
            if tuning != "full":  # small, directly loadable trainable weights (adapter + projector)
                save_trainable(self.strategy, Path(directory) / "trainable.safetensors", rank=self.rank,
                               tuning=tuning)

        # what describes the checkpoint; the registered components add what a resume restores
        meta = {"zero_stage": cfg.train.zero_stage, "tuning": tuning,
                "manifest_fingerprint": self.loader.manifest.dataset_fingerprint,
                "precision": cfg.train.precision, "config": cfg.to_dict(),
                "tokenizer_sha256": self.tokenizer_sha256}
        path = self.checkpoints.save(step, write_shards=write_shards, meta=meta)
        self.logger.note(f"checkpoint: {path}")
        from shards.storage import is_remote, publish_checkpoint

        if is_remote(cfg.checkpoint.dir):
            if self.rank == 0:  # data, then COMPLETE, then latest (the local staging dir must be shared)
                remote = publish_checkpoint(path, cfg.checkpoint.dir, keep_last=cfg.checkpoint.keep_last,
                                            tokenizer_dir=Path(self.loop_config["tokenizer_dir"]))
                self.logger.note(f"checkpoint published: {remote}")
            _barrier()
        return path

    def eval_loss(self) -> float:
        """Loss on the first eval-split batch of this rank (weights as trained; a fixed reference point)."""
        from shards.reader import make_loader
        from trainer.loop import to_device

        # held-out studies carry no training annotations: the reference point is the loss on reports
        loader = make_loader(self.cfg.data, self.cfg.data.eval_split, rank=self.rank, world_size=self.world_size,
                             batch_size=self.cfg.train.micro_batch_size, seed=self.cfg.seed,
                             builder=self.family.sample_builder(self.tokenizer, "train", "report"),
                             collate=self.family.collate(self.tokenizer), mode="eval")
        batch = next(iter(loader))
        return float(self.strategy.eval_forward(to_device(batch, self.strategy.device, self.strategy.dtype)).loss)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        pid_dir = Path(cfg.output_dir) / "pids"
        pid_dir.mkdir(parents=True, exist_ok=True)
        (pid_dir / f"rank_{self.rank}.pid").write_text(str(os.getpid()))
        from trainer.runlock import write_worker_record

        write_worker_record(Path(cfg.output_dir), self.rank)  # a later run's lock waits for live workers
        state = self.loop_state
        self.universal = False
        if self.resume is not None:
            self._restore()
        else:
            self._build_stage(0)
        from modeling.attention import plan_attention

        attention = plan_attention(cfg.model.attention, self.strategy.device, self.strategy.dtype).as_dict()
        self.logger = RunLogger(cfg.logging, rank=self.rank, output_dir=cfg.output_dir, run_name=cfg.name,
                                run_id=self.wandb.id, total_steps=cfg.train.max_steps, start_step=state.step,
                                config={**cfg.to_dict(), "resolved": {"attention": attention}})
        from trainer.strategy import module_dtypes

        # what runs in which precision (every part in the run's, rrg's own modules included; tests/test_real_configs.py)
        # one "start" line per start of the workers (a launch or a Ray restart): where it resumed from, if anywhere
        self.logger.record({"step": state.step, "event": "start", "world_size": self.world_size,
                            "resumed_from": str(self.resume.path) if self.resume is not None else None,
                            "model_dtypes": module_dtypes(self.strategy.module), "attention": attention})
        self.logger.note("attention: " + ", ".join(f"{k} {v}" for k, v in attention.items() if k != "requested"))
        if self.resume is not None:
            self.logger.note(f"resumed from {self.resume.path} at step {state.step}, stage "
                             f"'{self.stage.current.name}'"
                             + (f" (world size {self.resume.world_size} -> {self.world_size})" if self.universal else ""))
        stop_file = Path(self.loop_config["stop_file"])
        evaluator = None
        if cfg.eval.every_steps:
            from trainer.evaluation.evaluate import InTrainingEvaluator

            evaluator = InTrainingEvaluator(cfg, strategy=self.strategy, family=self.family, tokenizer=self.tokenizer,
                                            logger=self.logger, rank=self.rank, world_size=self.world_size)
        trainer = Trainer(cfg=cfg, strategy=self.strategy, loader=self.loader, checkpoints=self.checkpoints,
                          logger=self.logger, rank=self.rank, world_size=self.world_size, state=state,
                          save_checkpoint=self.save_checkpoint, stop_requested=stop_file.exists,
                          evaluator=evaluator)
        while True:
            end = self.stage.end()
            if state.step < end:
                state = trainer.fit(until=end)
            if state.preempted or self.stage.is_last:
                break
            self._next_stage()
            trainer.loader = self.loader
        if evaluator is not None:
            evaluator.close()  # rank 0 may still be scoring the last evaluation
        export_dir = None
        if not state.preempted and cfg.checkpoint.export != "none":
            export_dir = export_model(self.strategy, self.family, self.tokenizer, cfg,
                                      Path(cfg.output_dir) / "export", rank=self.rank,
                                      spec=self.stage.current.spec(cfg.train.lora))
        final_eval_loss = None if state.preempted else self.eval_loss()
        self.checkpoints.wait()  # the last save's pruning, running in the background, is over
        result = {"step": state.step, "preempted": state.preempted, "final_eval_loss": final_eval_loss,
                  "stage": self.stage.current.name,
                  "checkpoint": str(self.checkpoints.latest() or ""), "export": str(export_dir or ""),
                  "skipped_samples": state.skipped}
        if self.rank == 0:
            Path(cfg.output_dir, "result.json").write_text(json.dumps(result, indent=1))
        self.logger.finish()
        _barrier()
        return result


def init_state(export_dir: str) -> dict[str, torch.Tensor]:
    """Weights of an earlier export (``model.init_from``), LoRA merged, as a plain state dict."""
    from modeling.family import load_pretrained
    from modeling.tuning import plain_state_dict

    model = load_pretrained(export_dir)
    return plain_state_dict(model)


def load_plain_state(strategy: DeepSpeedStrategy, model: torch.nn.Module, state: dict[str, torch.Tensor],
                     where: str) -> None:
    """Load a plain state dict into a freshly built model (every rank holds it; ZeRO-3 aware)."""
    missing, unexpected = strategy.load_plain_state(model, state)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"{where}: the starting weights do not fit the model: missing={missing[:5]} "
                           f"unexpected={unexpected[:5]}")


class _KnownErrorLogFilter:
    """Ray Train logs every exception leaving the training function, traceback and all ("Error in
    training function"); for an error rrg knows and has recorded (:func:`trainer.runguard.record_fatal`)
    that record is dropped: the traceback is in the run's error log, the console gets one line."""

    def filter(self, record) -> bool:
        from trainer.runguard import recorded_in_this_process

        return not (recorded_in_this_process() and record.getMessage().startswith("Error in training function"))


def _drop_ray_traceback_log_of_known_errors() -> None:
    import logging

    log = logging.getLogger("ray.train.v2._internal.util")
    if not any(isinstance(f, _KnownErrorLogFilter) for f in log.filters):
        log.addFilter(_KnownErrorLogFilter())


def train_worker(loop_config: dict[str, Any]) -> None:
    for key, value in loop_config.get("env", {}).items():
        os.environ.setdefault(key, str(value))
    from trainer.runguard import FATAL, record_fatal

    cfg = config_from_dict(loop_config["config"])
    if (Path(cfg.output_dir) / FATAL).exists():
        return  # a restarted worker group after an error rrg knows: the driver reports it, nothing re-runs
    _drop_ray_traceback_log_of_known_errors()
    try:
        result = TrainingRun(cfg, loop_config).run()
    except Exception as err:
        # an error rrg knows: its traceback goes to logs/worker_errors.log (not the console), FATAL.json
        # tells the driver, and cluster/ray_train.py's failure policy does not restart the worker group
        record_fatal(cfg.output_dir, err, rank=dist_info()[0])
        raise
    try:
        import ray.train

        ray.train.report({k: v for k, v in result.items() if isinstance(v, (int, float))})
    except Exception:  # not under Ray
        pass


def main(argv: list[str] | None = None) -> None:
    """Run the workers without Ray: ``torchrun --nproc_per_node N -m trainer.worker CONFIG [k=v ...]``.

    (srun / torchrun users; the driver-side preparation runs on every rank but
    only rank 0 writes, the others wait for it.)
    """
    import sys

    from trainer.config import load_config
    from trainer.prepare import finish_run, install_stop_handlers, prepare_run

    args = sys.argv[1:] if argv is None else argv
    cfg = load_config(args[0] if args and "=" not in args[0] else None,
                      [a for a in args if "=" in a])
    DeepSpeedStrategy.init_distributed(cfg.cluster.use_gpu)
    lock = None
    try:
        if dist.get_rank() == 0:  # plain torchrun users: rank 0 is the driver (under `rrg train`, its lock)
            from trainer.runlock import acquire_checked

            lock = acquire_checked(Path(cfg.output_dir).resolve(), stale_s=cfg.checkpoint.lock_stale_s,
                                   wait_s=cfg.checkpoint.lock_wait_s)
        loop_config = broadcast_json(prepare_run(cfg) if dist.get_rank() == 0 else None)
        cfg = config_from_dict(loop_config["config"])
        # SIGTERM/SIGUSR1 (srun, torchrun's agent, a SLURM preemption) to any rank: checkpoint at the next step, stop
        install_stop_handlers(Path(loop_config["stop_file"]))
        TrainingRun(cfg, loop_config).run()
        if dist.get_rank() == 0:
            finish_run(cfg)
    except Exception as err:
        from trainer.runguard import ERROR_LOG, known_error, record_fatal

        if not record_fatal(cfg.output_dir, err, rank=dist.get_rank()):  # the same record as under Ray
            raise
        code = known_error(err)[1]
        if os.environ.get(DRIVER_ENV) != "torchrun":  # under `rrg train`, its driver prints the one line
            print(f"rrg: rank {dist.get_rank()}: {err} [exit {code}; traceback: {Path(cfg.output_dir) / ERROR_LOG}]",
                  file=sys.stderr, flush=True)  # rrg's own error: one line, the traceback in the log
        sys.exit(code)
    finally:
        if lock is not None:
            lock.release()
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a peer that died first: nothing left to tear down cleanly
                pass


DRIVER_ENV = "RRG_DRIVER"  # set by cluster/torchrun.py for the workers it starts


if __name__ == "__main__":
    main()
