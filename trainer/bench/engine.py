"""Engine overhead per ZeRO stage: rrg's DeepSpeed step against the plain PyTorch step, side by side.

For each ZeRO stage the same model (same initial weights) and the same batches run through
(a) the plain loop: forward, backward (DDP's all-reduce with several ranks), clip, AdamW, LR step;
(b) rrg's strategy built from the run config with ``train.zero_stage`` set to the stage.
The plain loop's AdamW is built with exactly the keyword arguments rrg's DeepSpeed config hands
torch (:func:`trainer.strategy.torch_adamw_kwargs`), so the ratio is engine overhead only, not a
different optimizer kernel.

Steps alternate a/b so machine noise hits both alike; medians are compared.  Each step is timed
in three phases, both as wall time and as this process's CPU time (``time.process_time``, which
a busy shared machine disturbs far less than wall time):

* ``forward``: the model call (rrg: the engine's forward; ZeRO-3 gathers parameters here);
* ``backward``: ``loss.backward()`` (rrg: ``engine.backward``: its per-parameter gradient hooks,
  the bucket copies and the reduction epilogue; plain with 2 ranks: DDP's bucketed all-reduce);
* ``step``: clip + AdamW + LR step + zero_grad (rrg: ``engine.step``: global grad norm, clip,
  AdamW on the flat fp32 partition, copy back into the model's parameters, all-gather).

Each loop runs with the ``torch.nn.functional.linear`` it would have in training: a ZeRO-3 engine
replaces it process-wide with DeepSpeed's memory-efficient linear (and never puts it back), so
the plain loop and the other stages' engines get torch's own back for the duration of their step.

The extra cost per step is ``median(b) - median(a)`` of the step totals; the phase columns say
where it goes.  Two sizes: the run config's model (one rank, its own batches, trainer/bench/train.py)
and the ~100M-parameter LM of :func:`trainer.bench.checkpoint.sized_100m` on 2 ranks (gloo, one
process each, short random token batches so that it finishes in minutes on 2 CPU cores).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from trainer.strategy import (DeepSpeedStrategy, build_ds_config, cosine_with_warmup, free_port,
                              torch_adamw_kwargs)

STAGES = (0, 1, 2, 3)
PHASES = ("forward", "backward", "step")

Stepper = Callable[[dict], list[tuple[float, float]]]  # batch -> (wall s, cpu s) per phase


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _phases(marks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]


# torch's own linear.  A ZeRO-3 engine replaces ``torch.nn.functional.linear`` process-wide with
# DeepSpeed's memory-efficient version ("This will persist unless manually reset"), which would
# then also run inside the plain loop; the plain step puts torch's back for its own duration.
TORCH_LINEAR = torch._C._nn.linear


@contextlib.contextmanager
def use_linear(fn=TORCH_LINEAR):
    """``torch.nn.functional.linear`` is ``fn`` inside the block."""
    import torch.nn.functional as F

    current = F.linear
    F.linear = fn
    try:
        yield
    finally:
        F.linear = current


def plain_stepper(model: torch.nn.Module, train, world_size: int = 1) -> Stepper:
    """The plain PyTorch step over ``model``'s trainable parameters (DDP-wrapped with several ranks)."""
    params = [p for p in model.parameters() if p.requires_grad]
    net = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    opt = torch.optim.AdamW(params, **torch_adamw_kwargs(build_ds_config(train, world_size)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(
        s, warmup=train.warmup_steps, total=train.max_steps, min_ratio=train.min_lr_ratio))

    def step(batch: dict) -> list[tuple[float, float]]:
        with use_linear():
            marks = [_clock()]
            loss = net(**batch).loss
            marks.append(_clock())
            loss.backward()
            marks.append(_clock())
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            marks.append(_clock())
        return _phases(marks)

    return step


def rrg_stepper(model: torch.nn.Module, train, world_size: int, rank: int) -> tuple[Stepper, DeepSpeedStrategy]:
    """rrg's step: exactly the strategy calls the training loop makes (forward, backward_and_step)."""
    import torch.nn.functional as F

    strategy = DeepSpeedStrategy(train, world_size=world_size, rank=rank, use_gpu=False)
    with use_linear():  # from torch's linear; a ZeRO-3 engine swaps in its own, as in training
        strategy.setup(model)
        linear = F.linear
    engine = strategy.engine

    def step(batch: dict) -> list[tuple[float, float]]:
        with use_linear(linear):
            marks = [_clock()]
            loss = strategy.forward(batch).loss
            marks.append(_clock())
            engine.backward(loss)  # = strategy.backward_and_step, split in its two engine calls
            marks.append(_clock())
            engine.step()
            marks.append(_clock())
        return _phases(marks)

    return step, strategy


@dataclass
class Timing:
    """Per-step samples of one loop: totals and phases, wall and CPU seconds."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    phase_wall: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    phase_cpu: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})

    def add(self, phases: list[tuple[float, float]]) -> None:
        self.wall.append(sum(w for w, _ in phases))
        self.cpu.append(sum(c for _, c in phases))
        for name, (w, c) in zip(PHASES, phases):
            self.phase_wall[name].append(w)
            self.phase_cpu[name].append(c)

    def summary(self) -> dict:
        med = statistics.median
        return {"wall": med(self.wall), "cpu": med(self.cpu),
                "phase_wall": {p: med(v) for p, v in self.phase_wall.items()},
                "phase_cpu": {p: med(v) for p, v in self.phase_cpu.items()}, "n": len(self.wall)}


def alternate(plain: Stepper, rrg: Stepper, batches: list, warm: int, repeats: int) -> dict:
    """Medians of ``plain`` and ``rrg`` alternating step by step after ``warm`` steps each.

    Returns ``{"plain": summary, "rrg": summary}`` (see :meth:`Timing.summary`); the loop that
    goes first alternates between rounds, so neither always runs on a just-warmed cache.
    """
    for fn in (plain, rrg):
        for b in batches[:warm]:
            fn(b)
    t = {"plain": Timing(), "rrg": Timing()}
    order = [("plain", plain), ("rrg", rrg)]
    for r in range(repeats):
        for b in batches[warm:]:
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                t[name].add(fn(b))
    return {k: v.summary() for k, v in t.items()}


def stage_train(cfg, stage: int):
    train = copy.deepcopy(cfg.train)
    train.zero_stage, train.grad_accum = stage, 1
    return train


def random_batches(model, n: int, micro_batch: int, text_len: int, seed: int) -> list[dict]:
    """``n`` unpacked batches of random tokens (one image placeholder per row) and random images."""
    g = torch.Generator().manual_seed(seed)
    vis = model.vision.model.config
    vocab = model.lm.get_input_embeddings().num_embeddings
    out = []
    for _ in range(n):
        ids = torch.randint(5, min(1000, vocab), (micro_batch, text_len), generator=g)
        ids[:, 1] = model.image_token_id
        out.append({"pixel_values": torch.randn(micro_batch, 3, vis.image_size, vis.image_size, generator=g),
                    "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def run_stages(base: torch.nn.Module, cfg, stages, batches: list, warm: int, repeats: int,
               world_size: int = 1, rank: int = 0) -> dict[int, dict]:
    """:func:`alternate` for each ZeRO stage, from copies of ``base`` (same initial weights)."""
    import gc

    results = {}
    for stage in stages:
        train = stage_train(cfg, stage)
        plain = plain_stepper(copy.deepcopy(base), train, world_size)
        rrg, strategy = rrg_stepper(copy.deepcopy(base), train, world_size, rank)
        results[stage] = alternate(plain, rrg, batches, warm, repeats)
        del plain, rrg, strategy
        gc.collect()
    return results


@dataclass
class BigRun:
    """The ~100M, 2-rank measurement: sized to finish in a few minutes on 2 shared CPU cores."""

    micro_batch: int = 2
    text_len: int = 32  # + the vision tower's patch tokens per row
    warm: int = 1
    steps: int = 3  # timed steps per loop and stage
    repeats: int = 1


def _rank_main(rank: int, cfg, stages, big: BigRun, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from trainer.bench.checkpoint import build_model

    DeepSpeedStrategy.init_distributed(False)
    try:
        base = build_model(cfg)  # same seed on both ranks: same initial weights
        batches = random_batches(base, big.warm + big.steps, big.micro_batch, big.text_len, seed=rank)
        results = run_stages(base, cfg, stages, batches, big.warm, big.repeats, world_size=2, rank=rank)
        n_params = sum(p.numel() for p in base.parameters())
        if rank == 0:
            with open(out_path, "w") as fh:
                json.dump({"params": n_params, "stages": results}, fh)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def bench_100m(cfg, stages=STAGES, big: BigRun | None = None) -> tuple[int, dict[int, dict]]:
    """(parameters, per-stage :func:`alternate` results): plain DDP vs rrg on the ~100M model, 2 ranks."""
    import torch.multiprocessing as mp

    from trainer.bench.checkpoint import sized_100m

    big = big or BigRun()
    fd, out = tempfile.mkstemp(prefix="rrg-bench-100m-", suffix=".json")
    os.close(fd)
    port = free_port()  # not this process's own group's port, nor anyone else's
    try:
        mp.spawn(_rank_main, args=(sized_100m(cfg), tuple(stages), big, port, out), nprocs=2, join=True)
        with open(out) as fh:
            got = json.load(fh)
    finally:
        os.unlink(out)
    return got["params"], {int(k): v for k, v in got["stages"].items()}


def profile_steps(step: Stepper, batches: list, top: int = 14,
                  pattern: str = r"deepspeed/|torch/optim/|clip_grad") -> list[tuple[str, float, int]]:
    """(function, cumulative CPU ms per step, calls per step) of the engine's and optimizer's code under
    cProfile: where rrg's extra time goes, function by function (nested: a caller includes its callees;
    cProfile's own per-call cost inflates call-heavy Python code)."""
    import cProfile
    import pstats
    import re

    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for b in batches:
        step(b)
    prof.disable()
    rows = []
    for (path, _, name), (_, calls, _, cum, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        if re.search(pattern, path):
            short = path.split("site-packages/")[-1].removesuffix(".py")
            rows.append((f"{short}:{name}", cum * 1e3 / len(batches), round(calls / len(batches))))
    rows.sort(key=lambda r: -r[1])
    return rows[:top]


def print_profile(title: str, rows: list[tuple[str, float, int]]) -> None:
    print(title)
    for name, ms, calls in rows:
        print(f"  {ms:8.1f} ms {calls:6d} calls  {name}")


def ratios(res: dict[int, dict]) -> dict[int, dict[str, float]]:
    """Per stage: wall and CPU ratios rrg / plain, and the extra ms per step."""
    return {z: {"ratio": r["rrg"]["wall"] / r["plain"]["wall"], "cpu_ratio": r["rrg"]["cpu"] / r["plain"]["cpu"],
                "extra_ms": (r["rrg"]["wall"] - r["plain"]["wall"]) * 1e3,
                "extra_cpu_ms": (r["rrg"]["cpu"] - r["plain"]["cpu"]) * 1e3}
            for z, r in res.items()}


def print_table(title: str, res: dict[int, dict]) -> None:
    """The ratio table, then where the extra CPU time goes, phase by phase (rrg - plain, ms/step)."""
    print(title)
    print(f"{'ZeRO':>5}{'plain ms':>10}{'rrg ms':>9}{'ratio':>7}{'extra ms':>10}"
          f"{'| cpu: plain':>12}{'rrg':>8}{'ratio':>7}{'extra':>7}"
          f"{'| extra cpu ms: fwd':>20}{'bwd':>7}{'step':>7}")
    for stage, r in sorted(res.items()):
        p, g = r["plain"], r["rrg"]
        extra = [(g["phase_cpu"][ph] - p["phase_cpu"][ph]) * 1e3 for ph in PHASES]
        print(f"{stage:>5}{p['wall'] * 1e3:>10.1f}{g['wall'] * 1e3:>9.1f}{g['wall'] / p['wall']:>7.3f}"
              f"{(g['wall'] - p['wall']) * 1e3:>+10.1f}"
              f"{'| ':>4}{p['cpu'] * 1e3:>8.1f}{g['cpu'] * 1e3:>8.1f}{g['cpu'] / p['cpu']:>7.3f}"
              f"{(g['cpu'] - p['cpu']) * 1e3:>+7.1f}"
              f"{'| ':>14}{extra[0]:>+6.1f}{extra[1]:>+7.1f}{extra[2]:>+7.1f}")
    n = next(iter(res.values()))["rrg"]["n"]
    print(f"      ({n} steps per loop and stage; ratio = rrg / plain step median; cpu = this process's CPU "
          f"time, less disturbed by other jobs than wall time)")
