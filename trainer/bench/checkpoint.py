"""``rrg bench checkpoint``: rrg's checkpoint save against a plain sequential write of the same bytes.

One process, one rank: the run config's family with its LM widened to about 100M parameters
(:func:`sized_100m`, Llama-style, 12 x 768, 32k vocabulary), wrapped by rrg's DeepSpeed strategy
(the config's ZeRO stage), one optimizer step so the Adam moments exist, then alternately:

(a) ``CheckpointManager.save`` (DeepSpeed shards + client state + meta, atomic publish) to a
    directory ``DIR/ckpt``;
(b) ``dd if=/dev/zero of=DIR/dd.bin bs=16M`` of exactly as many bytes as (a) wrote, in the same
    directory (Python's sequential writer when ``dd`` is missing).

Both are timed up to and including ``sync`` (the bytes are on the disk, not in the page cache).
One untimed round of each goes first: a fresh file system's first large writes are several
times slower than every later one (measured: 4.5 s, then 0.6 s for the same save).  The save
publishes with ``keep_last=1``, so each round also prunes the previous checkpoint; that runs in
the background thread it runs in during training and is waited for, untimed, before ``dd``
starts (the two never compete for the disk).
The ratio printed is throughput(a) / throughput(b) = time(b) / time(a); the goal is >= 0.8.
"""
from __future__ import annotations

import copy
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

LM_100M = dict(model_type="llama", hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
               num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
               vocab_size=32000, tie_word_embeddings=True)


def sized_100m(cfg):
    """A copy of ``cfg`` whose LM is the ~100M-parameter Llama-style architecture above."""
    cfg = copy.deepcopy(cfg)
    cfg.model.lm.path = None
    cfg.model.lm.hf_config = dict(LM_100M)
    return cfg


def scratch_tokenizer(family):
    """The family's tokenizer trained on a few report-like texts (in a temp dir, removed after)."""
    texts = [f"FINDINGS: study {i}. The heart size is normal. No pleural effusion or pneumothorax." for i in range(64)]
    with tempfile.TemporaryDirectory(prefix="rrg-bench-tok-") as scratch:
        return family.tokenizer(texts, save_dir=scratch)


def build_model(cfg) -> torch.nn.Module:
    """``cfg``'s family model (tuning applied) with a tokenizer trained on a few report-like texts."""
    from modeling.family import build_family
    from modeling.tuning import apply_tuning

    family = build_family(cfg.model)
    tok = scratch_tokenizer(family)
    torch.manual_seed(cfg.seed)
    model = family.build_model(tok)
    apply_tuning(model, family, cfg.train.resolved_stages()[0].spec(cfg.train.lora))
    return model


def build_engine(cfg, world_size: int = 1, rank: int = 0):
    """(strategy, model): :func:`build_model` wrapped by rrg's DeepSpeed strategy."""
    from trainer.strategy import DeepSpeedStrategy

    stage = cfg.train.resolved_stages()[0]
    strategy = DeepSpeedStrategy(cfg.train, world_size=world_size, rank=rank, use_gpu=False)
    model = build_model(cfg)
    strategy.setup(model, lr=stage.lr, steps=stage.steps)
    return strategy, model


def _one_step(strategy, model) -> None:
    """A real optimizer step (so the checkpoint holds the Adam moments) on a tiny random batch."""
    vis = model.vision.model.config
    ids = torch.randint(5, 200, (1, 24))
    ids[0, 1] = model.image_token_id
    batch = {"pixel_values": torch.randn(1, 3, vis.image_size, vis.image_size),
             "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    strategy.backward_and_step(strategy.forward(batch).loss)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _sequential_write(path: Path, nbytes: int) -> float:
    t0 = time.perf_counter()
    bs = 16 << 20
    if shutil.which("dd"):
        count, rest = divmod(nbytes, bs)
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", f"bs={bs}", f"count={count}", "status=none"], check=True)
        if rest:
            with open(path, "ab") as fh:
                fh.write(bytes(rest))
    else:
        block = bytes(bs)
        with open(path, "wb") as fh:
            for lo in range(0, nbytes, bs):
                fh.write(block[: min(bs, nbytes - lo)])
    os.sync()
    return time.perf_counter() - t0


def bench_checkpoint(cfg, directory: str | None = None, rounds: int = 2) -> dict[str, float]:
    from trainer.checkpoint import CheckpointManager
    from trainer.strategy import single_process_group

    torch.set_num_threads(1)
    single_process_group()
    cfg = sized_100m(cfg)
    strategy, model = build_engine(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    _one_step(strategy, model)
    root = Path(directory or Path(cfg.output_dir) / "bench_checkpoint")
    root.mkdir(parents=True, exist_ok=True)
    manager = CheckpointManager(root / "ckpt", rank=0, world_size=1, keep_last=1)
    ckpt_t, dd_t, nbytes = [], [], 0
    try:
        for r in range(rounds + 1):  # round 0: untimed warm-up of both
            os.sync()
            t0 = time.perf_counter()
            path = manager.save(r + 1, write_shards=strategy.save, meta={"bench": True}, client={"reader": {}})
            os.sync()
            t = time.perf_counter() - t0
            manager.wait()  # the previous checkpoint's background removal: not timed, done before dd
            nbytes = _du(path)
            d = _sequential_write(root / "dd.bin", nbytes)
            (root / "dd.bin").unlink()
            if r:
                ckpt_t.append(t)
                dd_t.append(d)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ck, dd = statistics.median(ckpt_t), statistics.median(dd_t)
    res = {"params": n_params, "bytes": nbytes, "checkpoint_s": ck, "sequential_s": dd, "ratio": dd / ck}
    print(f"model: {cfg.model.family}, {n_params / 1e6:.1f}M parameters, ZeRO-{cfg.train.zero_stage}, "
          f"{cfg.train.precision}, tuning {cfg.train.tuning}; {rounds} rounds alternating after one untimed, "
          f"each up to sync")
    print(f"checkpoint (rrg save, {nbytes / 2**20:.0f} MiB): {ck:7.2f} s  {nbytes / ck / 2**20:7.1f} MiB/s")
    print(f"same bytes, sequential dd:        {dd:7.2f} s  {nbytes / dd / 2**20:7.1f} MiB/s")
    print(f"throughput ratio checkpoint/dd:   {res['ratio']:.2f}   (goal >= 0.8)")
    return res
