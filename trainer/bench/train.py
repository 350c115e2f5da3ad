"""``rrg bench train``: rrg's engine against a plain PyTorch loop, side by side in one run.

Same model (same initial weights), same in-memory batches, one process, for each ZeRO
stage 0-3 (trainer/bench/engine.py):
(a) plain PyTorch: forward, backward, clip, AdamW step, LR step;
(b) rrg: the DeepSpeed strategy built from the run config with that ZeRO stage.
The batches are the ones training sees: the config's sample builder and the family's collate,
followed by sequence packing when ``train.packing.enabled`` (as trainer/worker.py does).
The two alternate step by step and the medians are compared, so machine noise hits both
alike.  Then the same per stage for a ~100M-parameter LM on 2 ranks (plain = DDP).  Also prints
data-loader headroom: loader samples/s with a no-op model (the real sample builder and collate)
over training samples/s.  Every table is printed with the load average it was measured under.
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
from trainer.strategy import single_process_group


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min, {os.cpu_count()} cores)"


def config_family(cfg: RunConfig):
    """(manifest, family, tokenizer) of the config's shards: the run's tokenizer when ``output_dir`` holds
    one, else one trained on the training split in a temp dir (removed after loading)."""
    from modeling.family import build_family
    from shards.textpass import iter_verified_records
    from trainer.prepare import ensure_shards

    manifest = ensure_shards(cfg)
    family = build_family(cfg.model)
    tok_dir = Path(cfg.output_dir) / "tokenizer"
    with tempfile.TemporaryDirectory(prefix="rrg-bench-tok-") as scratch:
        if not (tok_dir.is_dir() and any(tok_dir.iterdir())):
            tok_dir = Path(scratch)
            family.tokenizer(family.tokenizer_texts(iter_verified_records(
                manifest, cfg.data.train_split, cfg.data.verify, cfg.data.max_skip_fraction)),
                             save_dir=str(tok_dir))
        return manifest, family, family.tokenizer(None, save_dir=str(tok_dir))


def config_model_and_batches(cfg: RunConfig, n: int):
    """(model, batches, loader factory, batching label): the config's model (first stage's tuning
    applied, seeded) and ``n`` training batches as the workers build them, in memory on the CPU."""
    from modeling.tuning import apply_tuning
    from shards.reader import make_loader

    manifest, family, tok = config_family(cfg)
    stage = cfg.train.resolved_stages()[0]
    torch.manual_seed(cfg.seed)
    base = family.build_model(tok, manifest.assets)
    apply_tuning(base, family, stage.spec(cfg.train.lora))

    builder, collate = family.sample_builder(tok, "train", stage.target), family.collate(tok)
    packing = cfg.train.packing
    if packing.enabled:  # what trainer/worker.py's train_collate does
        from modeling.packing import packing_collate
        from modeling.tokenizer import image_token_id

        collate = packing_collate(collate, packing, image_token_id(tok), int(base.vision.num_patches))
    batching = f"packed (max_len {packing.max_len})" if packing.enabled else "unpacked"

    def loader(workers: int):
        data = copy.deepcopy(cfg.data)
        data.loader_workers = workers
        return make_loader(data, data.train_split, rank=0, world_size=1, batch_size=cfg.train.micro_batch_size,
                           seed=cfg.seed, builder=builder, collate=collate, mode="train")

    batches = []
    for batch in loader(0):
        batches.append(to_device(batch, torch.device("cpu"), torch.float32))
        if len(batches) == n:
            break
    return base, batches, loader, batching


def bench_train(cfg: RunConfig, steps: int = 20, repeats: int = 3, stages=(0, 1, 2, 3), big: bool = True,
                big_run=None, profile: tuple[int, ...] = ()) -> dict:
    from trainer.bench.engine import BigRun, bench_100m, print_table, ratios, run_stages

    torch.set_num_threads(1)
    single_process_group()
    warm = 3
    base, batches, loader, batching = config_model_and_batches(cfg, steps + warm)
    bs = cfg.train.micro_batch_size

    load_before = load_average()
    per_stage = run_stages(base, cfg, stages, batches, warm, repeats)
    load_after = load_average()
    rat = ratios(per_stage)
    main = per_stage.get(cfg.train.zero_stage, next(iter(per_stage.values())))
    plain_s, rrg_s = main["plain"]["wall"], main["rrg"]["wall"]
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
           "per_stage": {z: r["ratio"] for z, r in rat.items()}, "per_stage_detail": per_stage}
    n_params = sum(p.numel() for p in base.parameters())
    print(f"model: {cfg.model.family} ({n_params / 1e6:.1f}M parameters), tuning {cfg.train.tuning}, "
          f"{cfg.train.precision}, micro-batch {bs} {batching}, 1 rank, {steps} batches x {repeats} rounds, "
          f"plain and rrg alternating step by step")
    print(f"measured under {load_before} -> {load_after}")
    print_table("config model, 1 rank (plain = PyTorch loop):", per_stage)
    print(f"overhead ratio at the config's ZeRO-{cfg.train.zero_stage}: {res['overhead_ratio']:.3f} wall, "
          f"{rat[cfg.train.zero_stage]['cpu_ratio'] if cfg.train.zero_stage in rat else float('nan'):.3f} cpu"
          f"   (goal <= 1.05)")
    for zero in profile:  # where the extra goes, function by function (cProfile, CPU time)
        from trainer.bench.engine import plain_stepper, print_profile, profile_steps, rrg_stepper, stage_train

        train = stage_train(cfg, zero)
        for name, step in (("plain", plain_stepper(copy.deepcopy(base), train)),
                           ("rrg", rrg_stepper(copy.deepcopy(base), train, 1, 0)[0])):
            for b in batches[:warm]:
                step(b)
            print_profile(f"cProfile, ZeRO-{zero} {name} step: cumulative CPU ms per step (nested; profiler "
                          f"overhead included), {load_average()}", profile_steps(step, batches[warm:warm + 8]))
    print(f"loader ({cfg.data.loader_workers} workers, no-op model): {loader_sps:8.1f} samples/s")
    print(f"training consumption:        {train_sps:8.1f} samples/s per rank")
    print(f"loader headroom:             {res['loader_headroom']:.2f}   (goal >= 4)")
    if big:
        big_run = big_run or BigRun()
        load_before = load_average()
        t0 = time.perf_counter()
        n_big, big_res = bench_100m(cfg, stages=stages, big=big_run)
        print(f"\n~100M LM ({n_big / 1e6:.1f}M parameters), 2 ranks (gloo, one process each), micro-batch "
              f"{big_run.micro_batch} x {big_run.text_len} text tokens + {int(base.vision.num_patches)} image tokens "
              f"per row, {big_run.steps} steps x {big_run.repeats} rounds per stage, {time.perf_counter() - t0:.0f} s")
        print(f"measured under {load_before} -> {load_average()}")
        print_table("(plain = PyTorch DDP loop; rank 0's timings):", big_res)
        res["per_stage_100m"] = {z: r["ratio"] for z, r in ratios(big_res).items()}
        res["per_stage_100m_detail"] = big_res
    return res
