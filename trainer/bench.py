"""``rrg bench train``: rrg's engine against a plain PyTorch loop, side by side in one run.

Same tiny model (same initial weights), same in-memory batches, one process:
(a) plain PyTorch: forward, backward, clip, AdamW step, LR step;
(b) rrg: the DeepSpeed strategy built from the run config (ZeRO stage, precision...).
The two are timed in alternating rounds and the medians compared, so machine
noise hits both alike.  Also prints data-loader headroom: loader samples/s with
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
from trainer.strategy import DeepSpeedStrategy, cosine_with_warmup


def _single_process_group() -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29400 + os.getpid() % 500))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    DeepSpeedStrategy.init_distributed(False)


def _time_steps(step_fn, batches: list) -> list[float]:
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        step_fn(batch)
        times.append(time.perf_counter() - t0)
    return times


def bench_train(cfg: RunConfig, steps: int = 20, repeats: int = 3) -> dict[str, float]:
    from trainer.prepare import ensure_shards
    from modeling.family import build_family
    from modeling.tuning import apply_tuning
    from shards.manifest import iter_json_records
    from shards.reader import make_loader

    torch.set_num_threads(1)
    _single_process_group()
    manifest = ensure_shards(cfg)
    family = build_family(cfg.model)
    tok_dir = Path(cfg.output_dir) / "tokenizer"
    if not (tok_dir.is_dir() and any(tok_dir.iterdir())):
        tok_dir = Path(tempfile.mkdtemp(prefix="rrg-bench-tok-"))
        family.tokenizer(family.tokenizer_texts(iter_json_records(manifest, cfg.data.train_split)),
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

    torch.manual_seed(cfg.seed)
    base = family.build_model(tok, manifest.assets)
    apply_tuning(base, family, stage.spec(cfg.train.lora))
    plain_model = copy.deepcopy(base)
    params = [p for p in plain_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(
        s, warmup=cfg.train.warmup_steps, total=cfg.train.max_steps, min_ratio=cfg.train.min_lr_ratio))

    def plain_step(batch):
        loss = plain_model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    train = copy.deepcopy(cfg.train)
    train.grad_accum = 1
    strategy = DeepSpeedStrategy(train, world_size=1, rank=0, use_gpu=False)
    strategy.setup(copy.deepcopy(base))

    def rrg_step(batch):
        strategy.backward_and_step(strategy.forward(batch).loss)

    for fn in (plain_step, rrg_step):  # warm-up both (allocations, first-call costs)
        _time_steps(fn, batches[:warm])
    plain_t, rrg_t = [], []
    for _ in range(repeats):  # alternate step by step: each pair sees the machine in the same state
        for batch in batches[warm:]:
            plain_t += _time_steps(plain_step, [batch])
            rrg_t += _time_steps(rrg_step, [batch])
    plain_s, rrg_s = statistics.median(plain_t), statistics.median(rrg_t)
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
           "loader_headroom": loader_sps / train_sps}
    print(f"model: {cfg.model.family}, tuning {cfg.train.tuning}, ZeRO-{cfg.train.zero_stage}, "
          f"{cfg.train.precision}, micro-batch {bs}, {steps} batches x {repeats} rounds, "
          f"plain and rrg alternating step by step")
    print(f"plain PyTorch step (median): {plain_s * 1e3:8.2f} ms")
    print(f"rrg engine step    (median): {rrg_s * 1e3:8.2f} ms")
    print(f"overhead ratio rrg/plain:    {res['overhead_ratio']:.3f}   (goal <= 1.05)")
    print(f"loader ({cfg.data.loader_workers} workers, no-op model): {loader_sps:8.1f} samples/s")
    print(f"training consumption:        {train_sps:8.1f} samples/s per rank")
    print(f"loader headroom:             {res['loader_headroom']:.2f}   (goal >= 4)")
    return res
