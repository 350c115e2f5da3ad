"""``rrg bench packing``: padding efficiency with and without sequence packing, side by side.

Two length sources, each cut into the run's micro-batches exactly as training sees them:

* the config's own training split, through the real sample builder and collate (then
  :func:`modeling.packing.pack_batch`, what ``train.packing.enabled`` does);
* a MIMIC-like distribution of report lengths (findings + impression: log-normal words,
  median 60, about 3% past 200 words; ~1.3 tokens per word plus the prompt).

Efficiency = real positions / (rows x longest row), counted on text tokens (what the training
log's ``padding_efficiency`` reports) and on the LM's positions (text + image tokens).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from modeling.packing import plan_rows


def mimic_like_lengths(n: int, seed: int = 0, prompt_tokens: int = 14, max_text_len: int = 512) -> np.ndarray:
    """Token counts (prompt + report + eos) of ``n`` reports with MIMIC-CXR-like word counts."""
    rng = np.random.default_rng(seed)
    sigma = math.log(200 / 60) / 1.88  # P(words > 200) ~ 3%
    words = np.exp(rng.normal(math.log(60), sigma, n))
    tokens = prompt_tokens + np.ceil(words * 1.3).astype(int) + 1
    return np.minimum(tokens, max_text_len)


def _eff(real: int, rows: int, longest: int) -> float:
    return real / max(1, rows * longest)


def packing_efficiency(lengths, batch_size: int, max_len: int, image_tokens: int) -> dict[str, float]:
    """Mean over micro-batches of text and LM-position efficiency, unpacked and packed."""
    lengths = [int(x) for x in lengths]
    out = {"unpacked": [], "packed": [], "unpacked_lm": [], "packed_lm": []}
    for lo in range(0, len(lengths) - batch_size + 1, batch_size):
        text = lengths[lo:lo + batch_size]
        lm = [t + image_tokens - 1 for t in text]
        out["unpacked"].append(_eff(sum(text), len(text), max(text)))
        out["unpacked_lm"].append(_eff(sum(lm), len(lm), max(lm)))
        rows = plan_rows(lm, max_len)
        out["packed"].append(_eff(sum(text), len(rows), max(sum(text[i] for i in r) for r in rows)))
        out["packed_lm"].append(_eff(sum(lm), len(rows), max(sum(lm[i] for i in r) for r in rows)))
    return {k: float(np.mean(v)) for k, v in out.items()}


def _image_tokens(cfg) -> int:
    hf = cfg.model.vision.hf_config
    if "patch_size" in hf and "image_size" in hf:
        return (int(hf["image_size"]) // int(hf["patch_size"])) ** 2
    return 576  # a 336-px ViT-L/14 (LLaVA-Rad); real-path configs print this assumption


def config_lengths(cfg, batches: int) -> list[int]:
    """Text token counts of the first ``batches`` training micro-batches, through the real builder."""
    from shards.reader import make_loader
    from trainer.bench.train import config_family

    _, family, tok = config_family(cfg)
    stage = cfg.train.resolved_stages()[0]
    loader = make_loader(cfg.data, cfg.data.train_split, rank=0, world_size=1, batch_size=cfg.train.micro_batch_size,
                         seed=cfg.seed, builder=family.sample_builder(tok, "train", stage.target),
                         collate=family.collate(tok), mode="train")
    lengths: list[int] = []
    for i, batch in enumerate(loader):
        if i == batches:
            break
        lengths += batch["attention_mask"].sum(1).tolist()
    return lengths


def bench_packing(cfg, batches: int = 50, max_len: Optional[int] = None) -> dict[str, dict[str, float]]:
    bs = cfg.train.micro_batch_size
    max_len = max_len or cfg.train.packing.max_len
    img = _image_tokens(cfg)
    res = {"config": packing_efficiency(config_lengths(cfg, batches), bs, max_len, img),
           "mimic_like": packing_efficiency(mimic_like_lengths(bs * batches * 4), bs, max_len, img)}
    print(f"padding efficiency, micro-batch {bs}, packing max_len {max_len}, {img} image tokens per study")
    print(f"{'lengths':<22}{'text unpacked':>15}{'text packed':>13}{'LM unpacked':>13}{'LM packed':>11}")
    for name, r in (("config " + cfg.name, res["config"]), ("MIMIC-like", res["mimic_like"])):
        print(f"{name:<22}{r['unpacked']:>15.3f}{r['packed']:>13.3f}{r['unpacked_lm']:>13.3f}{r['packed_lm']:>11.3f}")
    print("goal: packed >= 0.95 (text = what the training log's padding_efficiency counts)")
    return res
