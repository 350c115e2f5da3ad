"""The training loop: reads top to bottom; checkpoints, logging and evaluation are objects it calls."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from trainer import chaos


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    preempted: bool = False
    skipped: int = 0  # bad samples skipped, summed over all ranks (updated at log steps)
    step_losses: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # kept on device until a log step

    # a ``run``-scope checkpoint component (trainer/stateful.py): the step is the checkpoint's own global_step
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_samples": self.skipped}  # summed over ranks, up to the last log step

    def load_state_dict(self, meta: dict[str, Any]) -> None:
        self.step = int(meta["global_step"])
        self.skipped = int(meta.get("skipped_samples", 0))  # the run's total, not only this process's part


class StepMeter:
    """Throughput and efficiency over one logging window (cheap: no device syncs per step)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.wait = 0.0
        self.samples = 0
        self.tokens = 0
        self.padded_tokens = 0
        self.skipped = 0

    def batch(self, batch: dict[str, Any]) -> None:
        mask = batch.get("attention_mask", batch.get("segment_ids"))  # segment ids: a packed batch
        if mask is not None:
            self.tokens += int((mask > 0).sum())
            self.padded_tokens += mask.numel()
        self.skipped += len(batch.get("skipped") or ())
        weight = batch.get("sample_weight")
        # weights are 1/n per row of an n-row study: round, since float sums fall just short (3 x 1/3 < 1)
        self.samples += round(float(weight.sum())) if weight is not None else len(batch.get("keys", []))

    def summary(self, world_size: int) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        return {
            "samples_per_s": self.samples * world_size / dt,
            "tokens_per_s": self.tokens * world_size / dt,
            "padding_efficiency": self.tokens / max(1, self.padded_tokens),
            "data_wait_fraction": self.wait / dt,
        }


def to_device(batch: dict[str, Any], device: torch.device, float_dtype: torch.dtype) -> dict[str, Any]:
    """Tensors to the device (floating ones in the compute dtype); lists of keys etc. stay behind."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if v.is_floating_point() and k != "sample_weight":
                v = v.to(float_dtype)
            out[k] = v
    return out


class Trainer:
    """Runs optimizer steps until ``max_steps`` or a preemption request, checkpointing on the way."""

    def __init__(self, *, cfg, strategy, loader, checkpoints, logger, rank: int, world_size: int,
                 state: LoopState, save_checkpoint: Callable[[int], Path], stop_requested: Callable[[], bool],
                 evaluator: Optional[Callable[[int], None]] = None):
        self.cfg, self.strategy, self.loader = cfg, strategy, loader
        self.checkpoints, self.logger = checkpoints, logger
        self.rank, self.world_size = rank, world_size
        self.state = state
        self.save_checkpoint = save_checkpoint
        self.stop_requested = stop_requested
        self.evaluator = evaluator
        self.float_dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        from trainer.nonfinite import NonFiniteGuard

        self.guard = NonFiniteGuard(cfg.train.max_nonfinite_steps)
        self.finite = True  # last guard verdict (same on every rank: all-reduced loss, global grad norm)

    def fit(self, until: Optional[int] = None) -> LoopState:
        """Optimizer steps up to ``until`` (default ``max_steps``: the end of the current stage)."""
        train, st = self.cfg.train, self.state
        until = train.max_steps if until is None else until
        meter = StepMeter()
        micro = 0
        while st.step < until:
            batches = iter(self.loader)
            while st.step < until:
                t_wait = time.perf_counter()
                batch = next(batches, None)
                if batch is None:  # epoch done: the loader moves on to the next epoch
                    break
                meter.wait += time.perf_counter() - t_wait
                meter.batch(batch)
                if self.cfg.logging.batch_rows:
                    self._log_rows(st.step + 1, batch)
                out = self.strategy.forward(to_device(batch, self.strategy.device, self.float_dtype))
                loss = out.loss
                self.strategy.backward_and_step(loss)
                micro += 1
                st.step_losses.append((st.step + 1, loss.detach().float()))
                if micro % train.grad_accum:
                    continue
                chaos.point("step", st.step + 1, self.rank)  # updated, not yet counted (trainer/chaos.py)
                st.step += 1
                self.logger.advance()
                log_step = st.step % self.cfg.logging.every_steps == 0 or st.step == until
                if log_step:  # the only host-device syncs of the loop happen here
                    self._log(meter)
                    meter.reset()
                # ranks agree on preemption at logging steps (all see the stop file, maybe not at the same step)
                if log_step and self._agree(self.stop_requested()):
                    st.preempted = True
                    self.logger.note(f"preemption requested: checkpointing at step {st.step}")
                    self._save_if_finite(log_step)
                    return st
                if st.step % self.cfg.checkpoint.every_steps == 0 or st.step == until:
                    self._save_if_finite(log_step)  # and at every stage end
                if self.evaluator and self.cfg.eval.every_steps and st.step % self.cfg.eval.every_steps == 0:
                    self.evaluator(st.step)
        return st

    def _log_rows(self, step: int, batch: dict[str, Any]) -> None:
        """What this rank trains on at ``step``: every row label the family's collate passes along (the lists
        of strings in the batch: study keys, and the labels of the rows a family fans a study out into)."""
        import json
        from pathlib import Path

        rows = {"step": step, **{k: list(v) for k, v in batch.items()
                                 if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)}}
        with open(Path(self.cfg.output_dir) / f"batch_rows.rank{self.rank}.jsonl", "a") as fh:
            fh.write(json.dumps(rows) + "\n")

    def _save_if_finite(self, logged: bool) -> None:
        """Checkpoint unless the state is NaN/inf (then the good checkpoints stay as they are)."""
        finite = self.finite
        if not logged:  # losses since the last log step are still pending on the device
            finite = not self._agree(not all(torch.isfinite(l).all() for _, l in self.state.step_losses))
            # and the last update's gradient norm: a finite loss with a NaN gradient leaves NaN weights
            finite = self.guard.observe(self.state.step, [1.0 if finite else float("nan"), self.strategy.grad_norm()])
        if finite:
            self.save_checkpoint(self.state.step)
        else:
            self.logger.note(f"not saving a checkpoint at step {self.state.step}: loss or grad norm is not finite")

    def _agree(self, flag: bool) -> bool:
        """True on every rank if any rank saw ``flag`` (one tiny all-reduce per step)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.strategy.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _log(self, meter: StepMeter) -> None:
        st = self.state
        # exact per-step losses of rank 0 (for reproducibility checks), then the window mean over all ranks
        per_step: dict[int, float] = {}
        for s, l in st.step_losses:
            per_step[s] = per_step.get(s, 0.0) + float(l) / self.cfg.train.grad_accum
        st.step_losses.clear()
        mean = torch.tensor(sum(per_step.values()) / max(1, len(per_step)), device=self.strategy.device)
        skipped = torch.tensor(float(meter.skipped), device=self.strategy.device)
        if self.world_size > 1:  # one collective: loss sum and skip count over ranks
            both = torch.stack([mean, skipped])
            dist.all_reduce(both, op=dist.ReduceOp.SUM)
            mean, skipped = both[0] / self.world_size, both[1]
        st.skipped += int(skipped)
        metrics = {"loss": float(mean), "lr": self.strategy.lr(), "skipped_samples": st.skipped}
        norm = self.strategy.grad_norm()
        if norm is not None:
            metrics["grad_norm"] = norm
        metrics.update(meter.summary(self.world_size))
        self.logger.log(st.step, metrics, per_step_losses=sorted(per_step.items()))
        self.finite = self.guard.observe(st.step, [metrics["loss"], metrics.get("grad_norm")])
