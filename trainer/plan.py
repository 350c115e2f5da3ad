"""``rrg plan``: will it fit, and how long will it take?  Answered without weights or GPU memory.

The family's model is built on PyTorch's ``meta`` device (shapes only) from the config's
inline ``hf_config`` (or a local directory's ``config.json``), each stage's tuning is applied,
and three tables are printed:

**Parameters** per top-level module (vision, projector, mask branch, Q-Former, R-GCN, LM,
LoRA ...), total and trainable, per stage.

**Memory per GPU** in GiB (2^30 bytes). ``--gpu-memory`` is GiB too: nvidia-smi reports an
"80 GB" A100 or H100 as 81,920 or 81,559 MiB, i.e. about 80 GiB (the CUDA context, NCCL
buffers and allocator fragmentation take a GiB or more of it; the plan counts live tensor
bytes, as ``torch.cuda.max_memory_allocated`` does, so leave some spare).
P = all parameters, T = trainable ones, N = data-parallel GPUs:

* weights: 2P (bf16) or 4P (fp32); ZeRO-3 divides them by N;
* gradients: 2T (bf16) or 4T; ZeRO-2 and 3 divide by N;
* optimizer (AdamW, fp32 master + two moments): 12T (bf16) or 8T (fp32); ZeRO-1, 2, 3
  divide by N; optimizer offload moves it to CPU memory;
* activations: the tensors autograd keeps for backward at the peak, per token (micro-batch x
  sequence), for a Hugging Face decoder layer (RMSNorm, rotary attention through fused/flash
  attention, so no s^2 term, gated MLP); a = 2 bytes (bf16) or 4 (fp32), hidden h, query
  width q, key/value width kv, MLP width f, L layers, vocabulary V, "train" = 1 when the LM's
  own weights train (full tuning), else 0 (frozen weights keep no inputs for weight gradients):

      layer   = norms x h x (4 + 2a train)        RMSNorm: its fp32 input (+ normalised, scaled outputs)
              + a (2q + 2kv) + a q train          attention: q, k, v, output (+ o_proj's input)
              + a (3 + train) f                   MLP: gate, act(gate), up (+ down_proj's input)
              + per LoRA module of the layer: (a + m) w_in + a r   (dropout output and mask, A's
                                                  output; m = 1 byte on CUDA, a on CPU; no dropout: a w_in + a r)
      loss    = (a + 12) V                        logits (a), the fp32 log-probs the cross-entropy
                                                  keeps (4) and its two fp32 gradients (8)
      working = a (h + 2f) + a w_in per LoRA module of one layer   gradients in flight in one layer's backward
      LM      = L x layer + max(loss, working)    peak at the start of backward
      LM, activation checkpointing = L x a h + max(loss, layer + working)
                                                  each layer's input, and the peak in the loss backward
                                                  or while the top layer is recomputed and run backward

  Norms per layer: 2 (Llama, Vicuna, Qwen), 4 + per-head q/k norms (Gemma 3, 4 (q + kv) more).
  The vision tower counts only when it trains (a ViT layer: a (9h + 2f) per patch), the
  projector only when it trains (a (h_vision + 2h) per image token); the small extra modules
  (Q-Former, R-GCN, mask branch, topic head) are not counted. tests/test_plan.py measures the
  peak memory of real training steps (fp32, CPU) against this plan: within 15%.

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
from dataclasses import dataclass, field
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
    projector_trainable: bool = False
    vocab: int = 0  # rows of the LM's output embedding, as built
    lora_modules: list[tuple[int, int]] = field(default_factory=list)  # (in_features, r) of each LoRA module in the LM


def _inline(sub) -> None:
    """The architecture to plan: the checkpoint at ``path`` when it is here (its real dimensions, read
    without its weights), else the inline ``hf_config``."""
    if sub.path and os.path.exists(sub.path):
        return
    if sub.hf_config:
        sub.path = None
    else:
        raise ValueError(f"cannot plan without an architecture: give hf_config or a local checkpoint directory "
                         f"(got path={sub.path!r})")


def _vision_dims(vision) -> dict:
    """The vision tower's config as a dict: the checkpoint's when planned from a path, else the inline one."""
    if vision.path is None:
        return dict(vision.hf_config)
    from modeling.vision import vision_source

    return vision_source(vision.path).config.to_dict()


def _lm_dims(lm) -> dict:
    if lm.path is None:
        return dict(lm.hf_config)
    from modeling.formats import lm_dims

    return lm_dims(lm.path)


def _tokenizer(family):
    from modeling.tokenizer import train_tokenizer

    return train_tokenizer([*family.prompt_texts(), "plan"] * 4, 300)


def _module_rows(model: torch.nn.Module) -> list[tuple[str, int, int]]:
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        top = "lora" if "lora_" in name else name.split(".")[0]
        r = rows.setdefault(top, [0, 0])
        r[0] += p.numel()
        r[1] += p.numel() if p.requires_grad else 0
    return [(k, v[0], v[1]) for k, v in rows.items()]


def _vocab(model: torch.nn.Module) -> int:
    lm = getattr(model, "lm", None)
    emb = lm.get_output_embeddings() if lm is not None and hasattr(lm, "get_output_embeddings") else None
    return int(emb.weight.shape[0]) if emb is not None else 0


def _lora_modules(lm: torch.nn.Module) -> list[tuple[int, int]]:
    out = []
    for mod in lm.modules():
        a = getattr(mod, "lora_A", None)
        if isinstance(a, torch.nn.ModuleDict):
            out += [(int(lin.in_features), int(lin.out_features)) for lin in a.values()]
    return out


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
    from modeling.formats import architecture_only

    for stage in cfg.train.resolved_stages():
        with torch.device("meta"), architecture_only():
            model = family.build_model(tok, stand_ins)
            apply_tuning(model, family, stage.spec(cfg.train.lora))
        rows = _module_rows(model)
        named = dict(model.named_parameters())
        lm = sum(p.numel() for n, p in named.items() if n.startswith("lm.") and "lora_" not in n)
        vis = sum(p.numel() for n, p in named.items() if n.startswith("vision."))
        plans.append(StagePlan(
            stage.name, stage.tuning, rows, sum(r[1] for r in rows), sum(r[2] for r in rows), lm, vis,
            vision_trainable=any(p.requires_grad for n, p in named.items() if n.startswith("vision.")),
            lm_trainable=any(p.requires_grad for n, p in named.items() if n.startswith("lm.") and "lora_" not in n),
            projector_trainable=any(p.requires_grad for n, p in named.items() if n.startswith("projector.")),
            vocab=_vocab(model), lora_modules=_lora_modules(model.lm) if hasattr(model, "lm") else []))
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


@dataclass
class Shape:
    """One transformer stack, as the activation formula sees it."""
    hidden: int
    layers: int
    q: int  # query width (heads x head_dim)
    kv: int  # key / value width (kv heads x head_dim)
    ffn: int
    vocab: int = 0
    norms: int = 2  # RMSNorms per layer
    qk_norm: bool = False  # per-head q / k norms (Gemma 3)
    kind: str = "decoder"  # "decoder" (RMSNorm, gated MLP) or "vit" (LayerNorm, GELU MLP)


def layer_activation_bytes(sh: Shape, a: int, trains: bool) -> float:
    """Bytes per token one layer keeps for backward (the formula in the module docstring), LoRA aside."""
    h, q, kv, f, t = sh.hidden, sh.q, sh.kv, sh.ffn, int(trains)
    if sh.kind == "vit":
        return a * (9 * h + 2 * f)
    return (sh.norms * h * (4 + 2 * a * t) + (4 * (q + kv) if sh.qk_norm else 0)
            + a * (2 * q + 2 * kv) + a * q * t + a * (3 + t) * f)


def activation_bytes(sh: Shape, seq: int, batch: int, checkpointing: bool, *, a: int = 2, trains: bool = True,
                     lora_modules: tuple | list = (), lora_dropout: float = 0.0, mask_bytes: float = 1.0,
                     loss: bool = True) -> float:
    """Peak activation bytes of ``batch`` sequences of ``seq`` tokens through the stack ``sh``.

    ``lora_modules``: (in_features, r) of every LoRA module in the stack (all layers);
    ``mask_bytes``: bytes per dropout-mask element (1 on CUDA, ``a`` on CPU);
    ``loss``: add the logits and cross-entropy over ``sh.vocab``.
    """
    per = 1 / max(sh.layers, 1)
    keep = a + (mask_bytes if lora_dropout > 0 else 0)
    layer = layer_activation_bytes(sh, a, trains) + per * sum(keep * w + a * r for w, r in lora_modules)
    logits = (a + 12) * sh.vocab if loss else 0
    # gradients in flight while one layer runs backward: MLP-wide ones, and each LoRA input's gradient
    working = a * (sh.hidden + 2 * sh.ffn) + per * sum(a * w for w, _ in lora_modules)
    if checkpointing:  # peak: in the loss backward, or while the top layer is recomputed and run backward
        return seq * batch * (sh.layers * a * sh.hidden + max(logits, layer + working))
    return seq * batch * (sh.layers * layer + max(logits, working))


def _lm_shape(hf: dict, vocab: int) -> Shape:
    hf = hf.get("text_config", hf)
    h, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or h // heads)
    gemma3 = str(hf.get("model_type", "")).startswith("gemma3")
    return Shape(h, int(hf["num_hidden_layers"]), heads * head_dim,
                 int(hf.get("num_key_value_heads") or heads) * head_dim, int(hf.get("intermediate_size", 4 * h)),
                 vocab, norms=4 if gemma3 else 2, qk_norm=gemma3)


def _vision_stack(hf: dict) -> Shape:
    """The vision tower as a ViT stack (its token count comes from the model's dry forward, not from here)."""
    hf = hf.get("vision_config", hf)
    if "embed_dim" in hf and "depths" in hf:  # Swin: counted at its final stage's width
        h = int(hf["embed_dim"]) * 2 ** (len(hf["depths"]) - 1)
        return Shape(h, sum(hf["depths"]), h, h, 4 * h, kind="vit")
    if "patch_size" in hf:
        h = int(hf["hidden_size"])
        ffn = int(hf.get("intermediate_size") or hf.get("mlp_ratio", 4) * h)
        return Shape(h, int(hf["num_hidden_layers"]), h, h, ffn, kind="vit")
    h = int(hf.get("hidden_sizes", [2048])[-1])
    return Shape(h, sum(hf.get("depths", [16])), h, h, 4 * h, kind="vit")


MEMORY_METHOD = (
    "memory method (GiB = 2^30 bytes, --gpu-memory in GiB): weights {w}P, gradients {w}T, AdamW {o}T (P all, T\n"
    "  trainable parameters; ZeRO-1+ splits the optimizer, 2+ the gradients, 3 the weights over the GPUs; offload\n"
    "  moves them to CPU); activations per token, a = {a} bytes: layer = norms x h x (4 + 2a train) + a(2q + 2kv)\n"
    "  + a q train + a(3 + train) f + per LoRA module (a + 1) w_in + a r; loss = (a + 12) V; working = a(h + 2f)\n"
    "  + a w_in per LoRA module; LM = L x layer + max(loss, working), with checkpointing L x a h + max(loss,\n"
    "  layer + working); vision and projector only when they train (trainer/plan.py; measured within 15%:\n"
    "  tests/test_plan.py)")


class _Memory:
    """Per-GPU memory of one stage under a ZeRO stage / offload / micro-batch (see the module docstring)."""

    def __init__(self, sp: StagePlan, cfg: RunConfig, n: int, lm: Shape, vision: Shape, patches: int, seq: int,
                 images: int, image_tokens: int, mask_bytes: float = 1.0):
        self.sp, self.cfg, self.n, self.lm, self.vision = sp, cfg, n, lm, vision
        self.patches, self.seq, self.images, self.image_tokens = patches, seq, images, image_tokens
        self.bf16 = cfg.train.precision == "bf16"
        self.a = 2 if self.bf16 else 4
        self.mask_bytes = mask_bytes

    def activations(self, batch: int, checkpointing: bool) -> float:
        sp, a = self.sp, self.a
        act = activation_bytes(self.lm, self.seq, batch, checkpointing, a=a, trains=sp.lm_trainable,
                               lora_modules=sp.lora_modules, lora_dropout=self.cfg.train.lora.dropout,
                               mask_bytes=self.mask_bytes)
        if sp.vision_trainable:
            act += self.images * activation_bytes(self.vision, self.patches, batch, checkpointing, a=a, loss=False)
        if sp.projector_trainable:
            act += self.images * self.image_tokens * batch * a * (self.vision.hidden + 2 * self.lm.hidden)
        return act

    def breakdown(self, checkpointing: bool, *, zero: Optional[int] = None, offload: Optional[bool] = None,
                  batch: Optional[int] = None) -> dict:
        t = self.cfg.train
        out = model_state_bytes(self.sp.total, self.sp.trainable, zero=t.zero_stage if zero is None else zero,
                                n=self.n, bf16=self.bf16,
                                offload_opt=t.offload_optimizer if offload is None else offload,
                                offload_params=t.offload_params)
        out["activations"] = self.activations(t.micro_batch_size if batch is None else batch, checkpointing)
        return out


def run_plan(cfg: RunConfig, *, gpus: int = 8, nodes: int = 1, gpu_memory: float = 80.0,
             studies: Optional[int] = None, mfu: float = 0.40, peak_tflops: float = 989.0,
             dropout_mask_bytes: float = 1.0) -> dict:
    """Plan and print every stage; ``gpu_memory`` in GiB.

    ``dropout_mask_bytes``: bytes per element of a dropout mask (1 on CUDA; a CPU run keeps a
    mask in the activation dtype, 2 or 4: tests/test_plan.py passes that when it measures on CPU).
    """
    plans, (family, model) = plan_stages(cfg)
    n = gpus * nodes
    t, m = cfg.train, family.cfg  # the family's config: a checkpoint path kept only where it is on this machine
    vshape = _vision_stack(_vision_dims(m.vision))
    patches = family.num_image_tokens(model)  # the tower's own token count (a dry forward), not config arithmetic
    images = int(family.images_per_row)
    image_tokens = family.image_tokens(patches)
    seq = max(family.text_len(st.target) for st in t.resolved_stages()) + images * image_tokens
    b = t.micro_batch_size
    global_batch = b * t.grad_accum * n
    if studies is None:
        studies = _train_studies(cfg)
    budget = gpu_memory * GIB
    out: dict[str, Any] = {"gpus": n, "seq_len": seq, "global_batch": global_batch, "stages": []}
    bf16 = t.precision == "bf16"
    print(f"rrg plan: {cfg.name} - family {m.family}, {n} GPU(s) ({nodes} node(s) x {gpus}), "
          f"{gpu_memory:g} GiB each, ZeRO-{t.zero_stage}, {t.precision}, micro-batch {b}, sequence {seq} "
          f"({seq - images * image_tokens} text + {images} x {image_tokens} image tokens; the longest stage's target)")
    print(MEMORY_METHOD.format(w=2 if bf16 else 4, o=12 if bf16 else 8, a=2 if bf16 else 4))
    for sp in plans:
        lm_hf = _lm_dims(m.lm)
        lm = _lm_shape(lm_hf, sp.vocab or int(lm_hf.get("vocab_size", 32000)))
        mem = _Memory(sp, cfg, n, lm, vshape, patches, seq, images, image_tokens, dropout_mask_bytes)
        print(f"\n== stage '{sp.name}' (tuning {sp.tuning}) ==")
        print(f"{'module':<14}{'parameters':>16}{'trainable':>16}")
        for name, total, train in sp.rows:
            print(f"{name:<14}{total:>16,}{train:>16,}")
        print(f"{'total':<14}{sp.total:>16,}{sp.trainable:>16,}   ({100 * sp.trainable / max(sp.total, 1):.2f}% trainable)")
        fits, parts = {}, {}
        for ckpt in (False, True):
            parts[ckpt] = mem.breakdown(ckpt)
            total = fits[ckpt] = sum(parts[ckpt].values())
            spare = budget - total
            print(f"memory/GPU, activation checkpointing {'on ' if ckpt else 'off'}: "
                  + ", ".join(f"{k} {v / GIB:.1f}" for k, v in parts[ckpt].items())
                  + f" -> {total / GIB:.1f} GiB "
                  + (f"fits {gpu_memory:g} GiB ({spare / GIB:.1f} GiB spare)" if spare >= 0
                     else f"DOES NOT FIT {gpu_memory:g} GiB ({-spare / GIB:.1f} GiB over)"))
        advice = _advice(mem, budget) if min(fits.values()) > budget else None
        if advice:
            print(f"smallest change that fits: {advice}")
        lm_flops = (6 if sp.lm_trainable else 4 if sp.trainable else 2) * sp.lm_params
        attn = (12 if sp.trainable else 6) * lm.layers * lm.hidden * seq
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
                              "memory_bytes": {str(k): v for k, v in parts.items()},
                              "flops_per_step": flops_step, "hours_per_epoch": hours, "advice": advice})
    return out


def _advice(mem: _Memory, budget: float) -> Optional[str]:
    """The first of: activation checkpointing, ZeRO-3, optimizer offload, smaller micro-batches."""
    t = mem.cfg.train
    options = [("activation checkpointing", t.zero_stage, False, t.micro_batch_size),
               ("train.zero_stage=3 + activation checkpointing", 3, False, t.micro_batch_size),
               ("ZeRO-3 + train.offload_optimizer=true + activation checkpointing", 3, True, t.micro_batch_size)]
    mb = t.micro_batch_size
    while mb > 1:
        mb //= 2
        options.append((f"ZeRO-3 + offload + checkpointing + train.micro_batch_size={mb}", 3, True, mb))
    for text, zero, off, b in options:
        if sum(mem.breakdown(True, zero=zero, offload=off, batch=b).values()) <= budget:
            return text
    return "nothing in this list fits: more GPUs (ZeRO-3 shards states across them) or a smaller model"


def _train_studies(cfg: RunConfig) -> Optional[int]:
    from shards.manifest import ManifestError, load_manifest

    with contextlib.suppress(ManifestError, OSError):
        return load_manifest(cfg.data.shards_dir).splits.get(cfg.data.train_split)
    return None
