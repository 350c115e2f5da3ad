"""``rrg bench train``: rrg's engine against a plain PyTorch loop, side by side in one run.

Same model (same initial weights), same in-memory batches, one process, for each ZeRO
stage 0-3 (trainer/engine_bench.py):
(a) plain PyTorch: forward, backward, clip, AdamW step, LR step;
(b) rrg: the DeepSpeed strategy built from the run config with that ZeRO stage.
The two alternate step by step and the medians are compared, so machine noise hits both
alike.  Then the same per stage for a ~100M-parameter LM on 2 ranks (plain = DDP).  Also prints data-loader headroom: loader samples/s with
a no-op model (the real sample builder and collate) over training samples/s.
"""
from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainer.config import RunConfig
from trainer.loop import to_device
from trainer.strategy import DeepSpeedStrategy


def _single_process_group() -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29400 + os.getpid() % 500))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    DeepSpeedStrategy.init_distributed(False)


def bench_train(cfg: RunConfig, steps: int = 20, repeats: int = 3, stages=(0, 1, 2, 3), big: bool = True,
                big_steps: int = 4) -> dict:
    from trainer.prepare import ensure_shards
    from modeling.family import build_family
    from modeling.tuning import apply_tuning
    from shards.textpass import iter_verified_records
    from shards.reader import make_loader

    torch.set_num_threads(1)
    _single_process_group()
    manifest = ensure_shards(cfg)
    family = build_family(cfg.model)
    tok_dir = Path(cfg.output_dir) / "tokenizer"
    if not (tok_dir.is_dir() and any(tok_dir.iterdir())):
        tok_dir = Path(tempfile.mkdtemp(prefix="rrg-bench-tok-"))
        family.tokenizer(family.tokenizer_texts(iter_verified_records(
            manifest, cfg.data.train_split, cfg.data.verify, cfg.data.max_skip_fraction)),
                         save_dir=str(tok_dir))
    tok = family.tokenizer(None, save_dir=str(tok_dir))
    stage = cfg.train.resolved_stages()[0]
    builder, collate = family.sample_builder(tok, "train", stage.target), family.collate(tok)
    bs = cfg.train.micro_batch_size

    def loader(workers: int):
        data = copy.deepcopy(cfg.data)
        data.loader_workers = workers
        return make_loader(data, data.train_split, rank=0, world_size=1, batch_size=bs, seed=cfg.seed,
                           builder=builder, collate=collate, mode="train")

    warm = 3
    batches = []
    for batch in loader(0):
        batches.append(to_device(batch, torch.device("cpu"), torch.float32))
        if len(batches) == steps + warm:
            break

    from trainer.engine_bench import alternate, plain_stepper, print_table, rrg_stepper, stage_train

    torch.manual_seed(cfg.seed)
    base = family.build_model(tok, manifest.assets)
    apply_tuning(base, family, stage.spec(cfg.train.lora))
    per_stage: dict[int, tuple[float, float]] = {}
    for zero in stages:  # the same initial weights and batches for every stage and both loops
        train = stage_train(cfg, zero)
        plain = plain_stepper(copy.deepcopy(base), train, ddp=False)
        rrg, _ = rrg_stepper(copy.deepcopy(base), train, 1, 0)
        per_stage[zero] = alternate(plain, rrg, batches, warm, repeats)
    plain_s, rrg_s = per_stage.get(cfg.train.zero_stage, next(iter(per_stage.values())))
    train_sps = bs / rrg_s

    n_load = max(8, steps)
    load_sps = []
    for _ in range(repeats):
        it = iter(loader(cfg.data.loader_workers))
        next(it)  # worker start-up is not throughput
        t0 = time.perf_counter()
        got = sum(int(next(it)["sample_weight"].numel()) for _ in range(n_load))
        load_sps.append(got / (time.perf_counter() - t0))
    loader_sps = statistics.median(load_sps)

    res = {"plain_step_s": plain_s, "rrg_step_s": rrg_s, "overhead_ratio": rrg_s / plain_s,
           "train_samples_per_s": train_sps, "loader_samples_per_s": loader_sps,
           "loader_headroom": loader_sps / train_sps,
           "per_stage": {z: r / p for z, (p, r) in per_stage.items()}}
    n_params = sum(p.numel() for p in base.parameters())
    print(f"model: {cfg.model.family} ({n_params / 1e6:.1f}M parameters), tuning {cfg.train.tuning}, "
          f"{cfg.train.precision}, micro-batch {bs}, 1 rank, {steps} batches x {repeats} rounds, "
          f"plain and rrg alternating step by step")
    print_table("config model, 1 rank (plain = PyTorch loop):", per_stage)
    print(f"overhead ratio at the config's ZeRO-{cfg.train.zero_stage}: {res['overhead_ratio']:.3f}   (goal <= 1.05)")
    print(f"loader ({cfg.data.loader_workers} workers, no-op model): {loader_sps:8.1f} samples/s")
    print(f"training consumption:        {train_sps:8.1f} samples/s per rank")
    print(f"loader headroom:             {res['loader_headroom']:.2f}   (goal >= 4)")
    if big:
        from trainer.engine_bench import bench_100m

        big_res = bench_100m(cfg, stages=stages, steps=big_steps)
        print_table(f"~100M-parameter LM, 2 ranks, micro-batch {bs} (plain = PyTorch DDP loop):", big_res)
        res["per_stage_100m"] = {z: r / p for z, (p, r) in big_res.items()}
    return res
