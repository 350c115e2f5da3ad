"""``rrg plan``: will it fit, and how long will it take?  Answered without weights or GPU memory.

The family's model is built on PyTorch's ``meta`` device (shapes only) from the config's
inline ``hf_config`` (or a local directory's ``config.json``), each stage's tuning is applied,
and three tables are printed:

**Parameters** per top-level module (vision, projector, mask branch, Q-Former, R-GCN, LM,
LoRA ...), total and trainable, per stage.

**Memory per GPU** (bytes; P = all parameters, T = trainable ones, N = data-parallel GPUs):

* weights: 2P (bf16) or 4P (fp32); ZeRO-3 divides them by N;
* gradients: 2T (bf16) or 4T; ZeRO-2 and 3 divide by N;
* optimizer (AdamW, fp32 master + two moments): 12T (bf16) or 8T (fp32); ZeRO-1, 2, 3
  divide by N; optimizer offload moves it to CPU memory;
* activations (Korthikanti et al. 2022, with fused/flash attention, so no s^2 term), per
  transformer layer for b sequences of s tokens and hidden size h: 34 * s * b * h bytes
  (bf16); with activation checkpointing only each layer's input is kept (2 * s * b * h)
  plus one layer recomputed at a time; plus the fp32 logits, 4 * s * b * V, for vocabulary V.
  The vision tower is counted the same way over its patch tokens.

**Time per epoch** at a stated MFU of a stated peak (default 40% of H100 bf16, 989 TFLOP/s):
FLOPs per token = 6 * N_lm (full fine-tuning: forward 2N, backward 4N) or 4 * N_lm when
the LM is frozen or LoRA-tuned (no weight gradients) + the attention term 12 * L * h * s
(6 * L * h * s when nothing in the LM trains); per image the vision encoder adds
2 * N_vis * patches (frozen) or 6 * N_vis * patches (trained).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from trainer.config import RunConfig

GIB = 1024 ** 3


@dataclass
class StagePlan:
    name: str
    tuning: str
    rows: list[tuple[str, int, int]]  # module, total, trainable
    total: int
    trainable: int
    lm_params: int
    vision_params: int
    vision_trainable: bool
    lm_trainable: bool


def _inline(sub) -> None:
    """Use the inline architecture (or a local config.json) instead of weights."""
    if sub.hf_config:
        sub.path = None
    elif sub.path and os.path.isfile(os.path.join(sub.path, "config.json")):
        with open(os.path.join(sub.path, "config.json")) as fh:
            sub.hf_config = json.load(fh)
        sub.path = None
    else:
        raise ValueError(f"cannot plan without an architecture: give hf_config or a directory with config.json "
                         f"(got path={sub.path!r})")


def _tokenizer(family):
    from modeling.tokenizer import train_tokenizer

    return train_tokenizer([*getattr(family, "prompt_texts", lambda: [])(), "plan"] * 4, 300)


def _module_rows(model: torch.nn.Module) -> list[tuple[str, int, int]]:
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        top = "lora" if "lora_" in name else name.split(".")[0]
        r = rows.setdefault(top, [0, 0])
        r[0] += p.numel()
        r[1] += p.numel() if p.requires_grad else 0
    return [(k, v[0], v[1]) for k, v in rows.items()]


def plan_stages(cfg: RunConfig) -> tuple[list[StagePlan], Any]:
    """Build the family's model on the meta device once per stage and count what trains."""
    from modeling.family import build_family
    from modeling.tuning import apply_tuning

    mcfg = copy.deepcopy(cfg.model)
    _inline(mcfg.vision)
    _inline(mcfg.lm)
    mcfg.lm.tokenizer = None
    family = build_family(mcfg)
    tok = _tokenizer(family)
    plans = []
    stand_ins = family.planning_assets()  # real tensors (a few MB): model code may read values from them
    for stage in cfg.train.resolved_stages():
        with torch.device("meta"):
            model = family.build_model(tok, stand_ins)
            apply_tuning(model, family, stage.spec(cfg.train.lora))
        rows = _module_rows(model)
        lm = sum(p.numel() for n, p in model.named_parameters() if n.startswith("lm.") and "lora_" not in n)
        vis = sum(p.numel() for n, p in model.named_parameters() if n.startswith("vision."))
        plans.append(StagePlan(stage.name, stage.tuning, rows, sum(r[1] for r in rows), sum(r[2] for r in rows), lm,
                               vis, any(p.requires_grad for n, p in model.named_parameters() if n.startswith("vision.")),
                               any(p.requires_grad for n, p in model.named_parameters()
                                   if n.startswith("lm.") and "lora_" not in n)))
    return plans, (family, model)


def model_state_bytes(p: int, t: int, *, zero: int, n: int, bf16: bool, offload_opt: bool, offload_params: bool) -> dict:
    w, g, o = (2 * p, 2 * t, 12 * t) if bf16 else (4 * p, 4 * t, 8 * t)
    if zero >= 1:
        o /= n
    if zero >= 2:
        g /= n
    if zero >= 3:
        w /= n
    if offload_opt:
        o = 0
    if offload_params:
        w = 0
    return {"weights": w, "gradients": g, "optimizer": o}


def activation_bytes(layers: int, hidden: int, seq: int, batch: int, vocab: int, checkpointing: bool) -> float:
    per_layer_full = 34 * seq * batch * hidden
    body = layers * 2 * seq * batch * hidden + per_layer_full if checkpointing else layers * per_layer_full
    return body + 4 * seq * batch * vocab


def _lm_dims(hf: dict) -> tuple[int, int, int]:
    hf = hf.get("text_config", hf)
    return int(hf["hidden_size"]), int(hf["num_hidden_layers"]), int(hf.get("vocab_size", 32000))


def _vision_dims(hf: dict, image_size: int) -> tuple[int, int, int]:
    hf = hf.get("vision_config", hf)
    if "embed_dim" in hf and "depths" in hf:  # Swin: counted at its final stage's width over the first stage's tokens
        return (int(hf["embed_dim"]) * 2 ** (len(hf["depths"]) - 1), sum(hf["depths"]),
                (image_size // int(hf.get("patch_size", 4))) ** 2 // 4)
    if "patch_size" in hf:
        patches = (image_size // int(hf["patch_size"])) ** 2
        return int(hf["hidden_size"]), int(hf["num_hidden_layers"]), patches
    return int(hf.get("hidden_sizes", [2048])[-1]), sum(hf.get("depths", [16])), (image_size // 32) ** 2


def run_plan(cfg: RunConfig, *, gpus: int = 8, nodes: int = 1, gpu_memory: float = 80.0,
             studies: Optional[int] = None, mfu: float = 0.40, peak_tflops: float = 989.0) -> dict:
    plans, (family, _) = plan_stages(cfg)
    n = gpus * nodes
    t, m = cfg.train, cfg.model
    bf16 = t.precision == "bf16"
    h, layers, vocab = _lm_dims(m.lm.hf_config)
    vh, vlayers, patches = _vision_dims(m.vision.hf_config, m.vision.image_size)
    images = int(getattr(family, "images_per_row", 1))
    image_tokens = family.image_tokens(patches)
    seq = max(family.text_len(st.target) for st in t.resolved_stages()) + images * image_tokens
    b = t.micro_batch_size
    global_batch = b * t.grad_accum * n
    if studies is None:
        studies = _train_studies(cfg)
    out: dict[str, Any] = {"gpus": n, "seq_len": seq, "global_batch": global_batch, "stages": []}
    print(f"rrg plan: {cfg.name} - family {m.family}, {n} GPU(s) ({nodes} node(s) x {gpus}), "
          f"{gpu_memory:g} GB each, ZeRO-{t.zero_stage}, {t.precision}, micro-batch {b}, sequence {seq} "
          f"({seq - images * image_tokens} text + {images} x {image_tokens} image tokens; the longest stage's target)")
    for sp in plans:
        print(f"\n== stage '{sp.name}' (tuning {sp.tuning}) ==")
        print(f"{'module':<14}{'parameters':>16}{'trainable':>16}")
        for name, total, train in sp.rows:
            print(f"{name:<14}{total:>16,}{train:>16,}")
        print(f"{'total':<14}{sp.total:>16,}{sp.trainable:>16,}   ({100 * sp.trainable / max(sp.total, 1):.2f}% trainable)")
        fits = {}
        for ckpt in (False, True):
            states = model_state_bytes(sp.total, sp.trainable, zero=t.zero_stage, n=n, bf16=bf16,
                                       offload_opt=t.offload_optimizer, offload_params=t.offload_params)
            act = activation_bytes(layers, h, seq, b, vocab, ckpt) + images * activation_bytes(
                vlayers, vh, patches, b, 0, ckpt)
            total = sum(states.values()) + act
            fits[ckpt] = total
            print(f"memory/GPU, activation checkpointing {'on ' if ckpt else 'off'}: "
                  + ", ".join(f"{k} {v / GIB:.1f}" for k, v in states.items())
                  + f", activations {act / GIB:.1f} -> {total / GIB:.1f} GiB "
                  + ("fits" if total <= gpu_memory * 1e9 else f"DOES NOT FIT {gpu_memory:g} GB"))
        advice = _advice(sp, cfg, n, bf16, layers, h, seq, vocab, vlayers, vh, patches, images, gpu_memory) \
            if min(fits.values()) > gpu_memory * 1e9 else None
        if advice:
            print(f"smallest change that fits: {advice}")
        lm_flops = (6 if sp.lm_trainable else 4 if sp.trainable else 2) * sp.lm_params
        attn = (12 if sp.trainable else 6) * layers * h * seq
        vis = (6 if sp.vision_trainable else 2) * sp.vision_params * patches
        flops_step = global_batch * (seq * (lm_flops + attn) + images * vis)
        steps_epoch = math.ceil(studies / global_batch) if studies else None
        hours = steps_epoch * flops_step / (n * peak_tflops * 1e12 * mfu) / 3600 if steps_epoch else None
        print(f"data: {global_batch * seq:,} tokens and {global_batch * images:,} images per step; "
              + (f"{steps_epoch:,} steps per epoch ({studies:,} studies)" if steps_epoch else "studies unknown"))
        print(f"FLOPs/step = global_batch x (seq x ({'6' if sp.lm_trainable else '4' if sp.trainable else '2'} x "
              f"N_lm + {'12' if sp.trainable else '6'} x L x h x s) + images x {'6' if sp.vision_trainable else '2'}"
              f" x N_vis x patches) = {flops_step:.3e}")
        if hours is not None:
            print(f"time per epoch at {100 * mfu:.0f}% MFU of {peak_tflops:g} TFLOP/s per GPU: {hours:.2f} h")
        out["stages"].append({"name": sp.name, "total": sp.total, "trainable": sp.trainable,
                              "rows": sp.rows, "memory_gib": {str(k): v / GIB for k, v in fits.items()},
                              "flops_per_step": flops_step, "hours_per_epoch": hours, "advice": advice})
    return out


def _advice(sp, cfg, n, bf16, layers, h, seq, vocab, vlayers, vh, patches, images, gpu_memory) -> Optional[str]:
    """The first of: activation checkpointing, ZeRO-3, optimizer offload, smaller micro-batches."""
    t = cfg.train
    options = [("activation checkpointing", t.zero_stage, False, t.micro_batch_size),
               ("train.zero_stage=3 + activation checkpointing", 3, False, t.micro_batch_size),
               ("ZeRO-3 + train.offload_optimizer=true + activation checkpointing", 3, True, t.micro_batch_size)]
    mb = t.micro_batch_size
    while mb > 1:
        mb //= 2
        options.append((f"ZeRO-3 + offload + checkpointing + train.micro_batch_size={mb}", 3, True, mb))
    for text, zero, off, b in options:
        states = model_state_bytes(sp.total, sp.trainable, zero=zero, n=n, bf16=bf16, offload_opt=off,
                                   offload_params=False)
        act = activation_bytes(layers, h, seq, b, vocab, True) + images * activation_bytes(vlayers, vh, patches, b, 0, True)
        if sum(states.values()) + act <= gpu_memory * 1e9:
            return text
    return "nothing in this list fits: more GPUs (ZeRO-3 shards states across them) or a smaller model"


def _train_studies(cfg: RunConfig) -> Optional[int]:
    from shards.manifest import ManifestError, load_manifest

    with contextlib.suppress(ManifestError, OSError):
        return load_manifest(cfg.data.shards_dir).splits.get(cfg.data.train_split)
    return None
