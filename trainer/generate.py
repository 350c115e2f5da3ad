"""Report generation over a rank's slice of a split, with optional image ablation.

Used by ``rrg eval`` (each Ray worker holds a full model replica: no collectives,
so ranks that finish at different lengths cannot hang anything) and by the
in-training evaluator (under the DeepSpeed engine; with ZeRO-3 every rank keeps
stepping with ``synced_gpus`` until all are done, and the eval-mode reader gives
every rank the same number of batches, padding with zero-weight fillers).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

import numpy as np
import torch

from trainer.loop import to_device

ABLATIONS = ("black", "shuffle")


def black_builder(builder):
    """The family's sample builder, fed an all-black image of the same size instead of the study's."""
    def build(sample):
        return builder(dataclasses.replace(sample, images=[np.zeros_like(im) for im in sample.images]))
    return build


class ImageShuffler:
    """Each real study gets the previous real study's image (the first gets its batch's last).

    A deterministic derangement over the rank's stream: images are shuffled across
    studies while reports, prompts and batch shapes stay as they were.
    """

    def __init__(self):
        self.prev: Optional[torch.Tensor] = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        pv = batch["pixel_values"].clone()
        real = [i for i, w in enumerate(batch["sample_weight"].tolist()) if w > 0]
        if not real:
            return batch
        carry = self.prev if self.prev is not None else batch["pixel_values"][real[-1]]
        for j, i in enumerate(real):
            pv[i] = carry if j == 0 else batch["pixel_values"][real[j - 1]]
        self.prev = batch["pixel_values"][real[-1]].clone()
        return {**batch, "pixel_values": pv}


def eval_loader(cfg, family, tok, *, rank: int, world_size: int, split: str, ablation: Optional[str] = None):
    from shards.reader import make_loader

    builder = family.sample_builder(tok, train=False)
    if ablation == "black":
        builder = black_builder(builder)
    return make_loader(cfg.data, split, rank=rank, world_size=world_size, batch_size=cfg.eval.batch_size,
                       seed=cfg.seed, builder=builder, collate=family.collate(tok), mode="eval")


def generate_batches(model, tok, batches, *, max_new_tokens: int, num_beams: int, synced_gpus: bool = False,
                     device=torch.device("cpu"), dtype=torch.float32, ablation: Optional[str] = None
                     ) -> Iterator[dict[str, Any]]:
    """Yields one prediction dict per real (non-filler) study."""
    shuffler = ImageShuffler() if ablation == "shuffle" else None
    for batch in batches:
        if shuffler is not None:
            batch = shuffler(batch)
        inputs = to_device(batch, device, dtype)
        with torch.no_grad():
            out = model.generate(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"],
                                 max_new_tokens=max_new_tokens, num_beams=num_beams, synced_gpus=synced_gpus)
        texts = tok.batch_decode(out, skip_special_tokens=True)
        for i, w in enumerate(batch["sample_weight"].tolist()):
            if w > 0:
                yield {"id": batch["study_ids"][i], "reference": batch["references"][i],
                       "generated": texts[i].strip()}


def generate_slice(model_dir: str, cfg_dict: dict, rank: int, world_size: int,
                   ablations: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """One eval worker: a full model replica generates for its slice, plain and per ablation."""
    import os

    from trainer.config import config_from_dict
    from modeling.registry import build_family, load_pretrained

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    cfg = config_from_dict(cfg_dict)
    model = load_pretrained(model_dir).eval()
    device = torch.device("cuda") if cfg.cluster.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" and device.type == "cuda" else torch.float32
    model.to(device=device, dtype=dtype)
    family = build_family(model.cfg)
    tok = model.tokenizer
    out: dict[str, list[dict]] = {}
    for ablation in (None, *ablations):
        loader = eval_loader(cfg, family, tok, rank=rank, world_size=world_size, split=cfg.eval.split,
                             ablation=ablation)
        out[ablation or "model"] = list(generate_batches(
            model, tok, loader, max_new_tokens=cfg.eval.max_new_tokens, num_beams=cfg.eval.num_beams,
            device=device, dtype=dtype, ablation=ablation))
    return out
