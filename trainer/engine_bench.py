"""Engine overhead per ZeRO stage: rrg's DeepSpeed step against the plain PyTorch step, side by side.

For each ZeRO stage the same model (same initial weights) and the same batches run through
(a) the plain loop: forward, backward, (DDP all-reduce with several ranks), clip, AdamW, LR step;
(b) rrg's strategy built from the run config with ``train.zero_stage`` set to the stage.
Steps alternate a/b so machine noise hits both alike; the medians are compared.  The extra
cost per step is ``median(b) - median(a)``.

Two sizes: the run config's model (one rank, the config's own batches, see trainer/bench.py) and
the ~100M-parameter LM of :func:`trainer.ckpt_bench.sized_100m` on 2 ranks (gloo, one process
each, random token batches of the config's micro-batch size).
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
from typing import Callable

import torch

from trainer.strategy import DeepSpeedStrategy, cosine_with_warmup

STAGES = (0, 1, 2, 3)


def plain_stepper(model: torch.nn.Module, train, ddp: bool) -> Callable[[dict], None]:
    """The plain PyTorch step over ``model``'s trainable parameters (DDP-wrapped with several ranks)."""
    params = [p for p in model.parameters() if p.requires_grad]
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(
        s, warmup=train.warmup_steps, total=train.max_steps, min_ratio=train.min_lr_ratio))

    def step(batch: dict) -> None:
        net(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return step


def rrg_stepper(model: torch.nn.Module, train, world_size: int, rank: int) -> tuple[Callable[[dict], None], object]:
    strategy = DeepSpeedStrategy(train, world_size=world_size, rank=rank, use_gpu=False)
    strategy.setup(model)

    def step(batch: dict) -> None:
        strategy.backward_and_step(strategy.forward(batch).loss)

    return step, strategy


def alternate(plain: Callable, rrg: Callable, batches: list, warm: int, repeats: int) -> tuple[float, float]:
    """Median seconds per step of ``plain`` and ``rrg``, alternating step by step after a warm-up."""
    for fn in (plain, rrg):
        for b in batches[:warm]:
            fn(b)
    pt, rt = [], []
    for _ in range(repeats):
        for b in batches[warm:]:
            for fn, acc in ((plain, pt), (rrg, rt)):
                t0 = time.perf_counter()
                fn(b)
                acc.append(time.perf_counter() - t0)
    return statistics.median(pt), statistics.median(rt)


def stage_train(cfg, stage: int):
    train = copy.deepcopy(cfg.train)
    train.zero_stage, train.grad_accum = stage, 1
    return train


def random_batches(model, n: int, micro_batch: int, text_len: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    vis = model.vision.model.config
    out = []
    for _ in range(n):
        ids = torch.randint(5, 1000, (micro_batch, text_len), generator=g)
        ids[:, 1] = model.image_token_id
        out.append({"pixel_values": torch.randn(micro_batch, 3, vis.image_size, vis.image_size, generator=g),
                    "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def _rank_main(rank: int, cfg, stages, steps: int, repeats: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import gc

    from trainer.ckpt_bench import build_model

    DeepSpeedStrategy.init_distributed(False)
    base = build_model(cfg)  # same seed on both ranks: same initial weights
    batches = random_batches(base, 2 + steps, cfg.train.micro_batch_size, 48, seed=rank)
    results = {}
    for stage in stages:
        train = stage_train(cfg, stage)
        plain = plain_stepper(copy.deepcopy(base), train, ddp=True)
        rrg, _ = rrg_stepper(copy.deepcopy(base), train, 2, rank)
        results[stage] = alternate(plain, rrg, batches, 2, repeats)
        del plain, rrg
        gc.collect()
    if rank == 0:
        with open(out_path, "w") as fh:
            json.dump(results, fh)


def bench_100m(cfg, stages=STAGES, steps: int = 4, repeats: int = 1) -> dict[int, tuple[float, float]]:
    """Plain DDP vs rrg per ZeRO stage on the ~100M model, 2 ranks (2 processes)."""
    import torch.multiprocessing as mp

    from trainer.ckpt_bench import sized_100m

    out = tempfile.mktemp(prefix="rrg-bench-100m-", suffix=".json")
    port = 29600 + os.getpid() % 300
    mp.spawn(_rank_main, args=(sized_100m(cfg), tuple(stages), steps, repeats, port, out), nprocs=2, join=True)
    with open(out) as fh:
        return {int(k): tuple(v) for k, v in json.load(fh).items()}


def print_table(title: str, res: dict[int, tuple[float, float]]) -> None:
    print(title)
    print(f"{'ZeRO':>6}{'plain ms':>11}{'rrg ms':>11}{'ratio':>8}{'extra ms/step':>15}")
    for stage, (p, r) in sorted(res.items()):
        print(f"{stage:>6}{p * 1e3:>11.1f}{r * 1e3:>11.1f}{r / p:>8.3f}{(r - p) * 1e3:>15.1f}")
