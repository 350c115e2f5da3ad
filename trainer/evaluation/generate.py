"""Report generation over a rank's slice of a split, through the family contract, with ablations.

Used by ``rrg eval`` (each worker holds a full model replica: no collectives, so ranks that
finish at different lengths cannot hang anything) and by the in-training evaluator (under the
DeepSpeed engine; with ZeRO-3 every rank keeps stepping with ``synced_gpus`` until all are
done, and the eval-mode reader gives every rank the same number of batches, padding with
zero-weight fillers).

Ablations are batch-level and belong to the family (``family.ablations`` says what each one
blanks): ``black`` blanks the image and everything derived from it; ``shuffle`` (done here,
for every family) gives each study another study's image inputs (``family.image_keys``) while
reports, prompts and batch shapes stay as they were.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import torch

from trainer.loop import to_device


class ImageShuffler:
    """Each real study gets the previous real study's image inputs (the first gets its batch's last).

    A deterministic derangement over the rank's stream, over every key in ``keys`` at once
    (image, masks, KG tensors ...), rows grouped by study as ``study_index`` says.
    """

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys
        self.prev: dict[str, torch.Tensor] = {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        real = [i for i, w in enumerate(batch["sample_weight"].tolist()) if w > 0]
        keys = [k for k in self.keys if k in batch and torch.is_tensor(batch[k])]
        if not real or not keys:
            return batch
        out = dict(batch)
        for k in keys:
            src = batch[k]
            moved = src.clone()
            carry = self.prev.get(k, src[real[-1]])
            for j, i in enumerate(real):
                moved[i] = carry if j == 0 else src[real[j - 1]]
            self.prev[k] = src[real[-1]].clone()
            out[k] = moved
        return out


def eval_loader(cfg, family, tok, *, rank: int, world_size: int, split: str, gen=None):
    """Eval-mode batches of ``split``; ``gen`` (default ``gen_config(cfg)``) tells the builder what to carry."""
    from shards.reader import make_loader

    builder = family.sample_builder(tok, "eval", gen=gen if gen is not None else gen_config(cfg))
    return make_loader(cfg.data, split, rank=rank, world_size=world_size, batch_size=cfg.eval.batch_size,
                       seed=cfg.seed, builder=builder, collate=family.collate(tok), mode="eval")


def gen_config(cfg, synced_gpus: bool = False):
    from modeling.family import GenConfig

    return GenConfig(max_new_tokens=cfg.eval.max_new_tokens, num_beams=cfg.eval.num_beams,
                     synced_gpus=synced_gpus, options=dict(cfg.eval.family_options))


def generate_batches(model, family, tok, batches, gen, *, device=torch.device("cpu"), dtype=torch.float32,
                     ablation: Optional[str] = None) -> Iterator[dict[str, Any]]:
    """Yields one prediction dict per real (non-filler) study: id, reference, generated (+ trace, extra)."""
    shuffler = ImageShuffler(family.image_keys) if ablation == "shuffle" else None
    for batch in batches:
        if shuffler is not None:
            batch = shuffler(batch)
        elif ablation is not None:
            batch = family.ablate(batch, ablation)
        inputs = {**batch, **to_device(batch, device, dtype)}
        with torch.no_grad():
            outs = family.generate(model, tok, inputs, gen)
        for g in outs:
            rec = {"id": g.id, "reference": g.reference, "generated": g.generated}
            if g.trace is not None:
                rec["trace"] = g.trace
            rec.update(g.extra)
            yield rec


def generate_slice(model_dir: str, cfg_dict: dict, rank: int, world_size: int,
                   ablations: tuple[str, ...] = (), narrative_k: int = 0) -> dict[str, list[dict]]:
    """One eval worker: a full model replica generates for its slice, plain, per ablation and per
    ``family.eval_variants(gen)`` (a variant equal to the headline GenConfig reuses its run); with
    ``narrative_k`` also ``narrative_<K>_real|black`` for K = 1..narrative_k (trainer/evaluation/narrative.py)."""
    import os

    from modeling.family import build_family, load_pretrained
    from trainer.config import config_from_dict

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    cfg = config_from_dict(cfg_dict)
    model = load_pretrained(model_dir).eval()
    device = torch.device("cuda") if cfg.cluster.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" and device.type == "cuda" else torch.float32
    model.to(device=device, dtype=dtype)
    family = build_family(model.cfg)
    tok = model.tokenizer
    gen = gen_config(cfg)
    out: dict[str, list[dict]] = {}
    for ablation in (None, *ablations):
        loader = eval_loader(cfg, family, tok, rank=rank, world_size=world_size, split=cfg.eval.split, gen=gen)
        out[ablation or "model"] = list(generate_batches(model, family, tok, loader, gen, device=device, dtype=dtype,
                                                         ablation=ablation))
    for name, variant in family.eval_variants(gen).items():
        if variant == gen:
            out[name] = out["model"]
            continue
        loader = eval_loader(cfg, family, tok, rank=rank, world_size=world_size, split=cfg.eval.split, gen=variant)
        out[name] = list(generate_batches(model, family, tok, loader, variant, device=device, dtype=dtype))
    if narrative_k:
        from modeling.templates import get_template
        from trainer.evaluation.narrative import narrative_batches

        template = get_template(model.cfg.lm.chat_template)
        studies = cfg.eval.narrative_bias.studies
        limit = -(-studies // world_size) if studies else 0
        for k in range(1, narrative_k + 1):
            for kind in ("real", "black"):
                loader = eval_loader(cfg, family, tok, rank=rank, world_size=world_size, split=cfg.eval.split, gen=gen)
                out[f"narrative_{k}_{kind}"] = list(generate_batches(
                    model, family, tok, narrative_batches(loader, tok, template, k, limit), gen, device=device, dtype=dtype,
                    ablation=None if kind == "real" else "black"))
    return out
