"""``rrg bench gpu CONFIG``: tokens/s and MFU of rrg's training step on one CUDA GPU.

What runs is the real training step (the config's family, rrg's DeepSpeed strategy built from
the config: ``DeepSpeedStrategy.forward`` then ``backward_and_step``) on random-initialised
models and random batches, with:

* bf16 (DeepSpeed's bf16 mode: bf16 weights and gradients, fp32 master weights and Adam moments);
* the fused attention entry point (modeling/attention.py): flash-attn when it is installed, else
  PyTorch SDPA restricted to its flash backend (``torch.nn.attention.sdpa_kernel``: a call that
  cannot use it fails instead of silently falling back to the math kernel); one study per row,
  no padding, so every attention call is mask-free (causal in the LM, full in the vision tower);
* activation checkpointing (``train.activation_checkpointing``), ZeRO-2 (``--zero 3`` for ZeRO-3).

Two cases (``--case``):

* ``full``: full fine-tuning of the largest Llama-style LM of :data:`FULL_LADDER` whose estimated
  memory fits the GPU (:func:`pick_lm`; ~1-3B), plus a ViT-L/14-336-size vision encoder
  (trained or frozen as ``train.train_vision`` says) and the config's projector;
* ``lora``: LoRA (``train.lora``) on a 7B Llama-2-shaped LM, vision encoder frozen, projector trained.

FLOPs (:class:`FlopCount`, printed with every number substituted).  Per LM position (a row holds
``T`` positions: image tokens + text tokens):

* full fine-tuning:  ``6 N + 12 L d T``
* LoRA:              ``4 N + 6 N_lora + 12 L d T``  (frozen weights: forward 2N + input-gradient 2N;
  no weight gradient; the adapters are trained: 6 per parameter)

``N`` = LM parameters that take part in matmuls (all, minus the input embedding table when it is
not tied to the output layer: a lookup costs no FLOPs), ``L`` layers, ``d`` = heads x head dim,
``T`` = positions per row.  ``12 L d T`` is the attention score and value matmuls (2 x 2 T d
per position per layer forward, x3 with the backward), counted without the causal halving, as
PaLM (appendix B) and torchtitan count it.  Per image, the vision encoder over its ``P`` tokens:
``P (6 N_v + 12 L_v d_v P)`` when trained, ``P (2 N_v + 4 L_v d_v P)`` when frozen (forward
only: nothing upstream needs its gradient); the projector ``6 N_p`` per image token.  Recomputation
by activation checkpointing is not counted (this is MFU, not hardware FLOPs utilisation).

MFU = FLOPs per step x steps / seconds / the GPU's peak dense bf16 FLOP/s (:data:`PEAK_BF16`,
by device name; ``--peak-tflops`` for others).

Without CUDA the command exits with one line and code 2 (no GPU was available while this was
written: its figures are to be recorded in docs/performance.md when it is run on one).
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

# Llama-style LM shapes (vocabulary 32,000: rrg trains its own tokenizer; the table is the LM's).
LM_PRESETS: dict[str, dict[str, Any]] = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=True),  # Llama-3.2-1B shape
    "llama-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                     num_key_value_heads=8, tie_word_embeddings=True),  # Llama-3.2-3B shape
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, tie_word_embeddings=False),  # Llama-2-7B shape
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=False),  # CPU tests
}
LM_COMMON = dict(model_type="llama", vocab_size=32000, max_position_embeddings=4096)
VISION_PRESETS: dict[str, dict[str, Any]] = {
    "vit-l": dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, patch_size=14, image_size=336, num_channels=3),  # CLIP ViT-L/14-336
    "tiny": dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, patch_size=8, image_size=32, num_channels=3),
}
FULL_LADDER = ("llama-3b", "llama-1b")  # largest first
LORA_LM = "llama-7b"

# Peak dense (no sparsity) bf16 tensor-core FLOP/s, from the vendors' data sheets.  Checked in
# order: the first substring of the device name that matches wins.
PEAK_BF16: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H800", 989.4e12), ("H200", 989.4e12),
    ("GH200", 989.4e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
    ("MI300X", 1307e12),
]


def peak_flops(device_name: str) -> Optional[float]:
    """Peak dense bf16 FLOP/s of a GPU by its name (``torch.cuda.get_device_name``); None if unknown."""
    for key, value in PEAK_BF16:
        if key in device_name:
            return value
    return None


def llama_params(shape: dict[str, Any], vocab: int = LM_COMMON["vocab_size"]) -> int:
    """Closed-form parameter count of a Llama-style LM (no biases; RMSNorm weights)."""
    d, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * inter + 2 * d
    return layers * per_layer + d + vocab * d * (1 if shape.get("tie_word_embeddings") else 2)


def vit_params(shape: dict[str, Any]) -> int:
    """Closed-form parameter count of a CLIP vision tower (pre/post layernorm, class token included)."""
    d, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    p = shape["patch_size"]
    tokens = (shape["image_size"] // p) ** 2 + 1
    per_layer = 4 * (d * d + d) + (d * inter + inter) + (inter * d + d) + 2 * 2 * d
    return layers * per_layer + shape["num_channels"] * p * p * d + d + tokens * d + 2 * 2 * d


@dataclass(frozen=True)
class FlopCount:
    """Training FLOPs of one step, from the counts the model reports (see the module docstring)."""

    mode: str  # "full" or "lora"
    lm_params: int  # N: LM parameters in matmuls (LoRA: the frozen base's)
    lm_layers: int
    lm_attn_dim: int  # d = query heads x head dim
    seq_len: int  # T: LM positions per row (image + text tokens)
    lora_params: int = 0
    vis_params: int = 0  # N_v: vision parameters in matmuls (position-embedding lookups excluded)
    vis_layers: int = 0
    vis_attn_dim: int = 0
    vis_tokens: int = 0  # P: tokens per image through the encoder (class token included)
    vis_trained: bool = False
    proj_params: int = 0
    image_tokens: int = 0  # projector inputs per image (patch tokens spliced into the LM)

    def lm_per_token(self) -> float:
        attn = 12 * self.lm_layers * self.lm_attn_dim * self.seq_len
        if self.mode == "lora":
            return 4 * self.lm_params + 6 * self.lora_params + attn
        return 6 * self.lm_params + attn

    def vision_per_image(self) -> float:
        k, a = (6, 12) if self.vis_trained else (2, 4)
        return self.vis_tokens * (k * self.vis_params + a * self.vis_layers * self.vis_attn_dim * self.vis_tokens)

    def projector_per_image(self) -> float:
        return 6 * self.proj_params * self.image_tokens

    def per_step(self, rows: int, images_per_row: int = 1) -> float:
        images = rows * images_per_row
        return rows * self.seq_len * self.lm_per_token() + images * (self.vision_per_image()
                                                                     + self.projector_per_image())

    def formula(self, rows: int) -> list[str]:
        """The arithmetic, every number substituted, one line per term."""
        T, L, d, N = self.seq_len, self.lm_layers, self.lm_attn_dim, self.lm_params
        attn = 12 * L * d * T
        if self.mode == "lora":
            lm = (f"LM per position:     4 N + 6 N_lora + 12 L d T = 4 x {N:.4g} + 6 x {self.lora_params:.4g} + "
                  f"12 x {L} x {d} x {T} = {self.lm_per_token():.4g}")
        else:
            lm = f"LM per position:     6 N + 12 L d T = 6 x {N:.4g} + 12 x {L} x {d} x {T} = {self.lm_per_token():.4g}"
        k, a = (6, 12) if self.vis_trained else (2, 4)
        P = self.vis_tokens
        vis = (f"vision per image:    P ({k} N_v + {a} L_v d_v P) = {P} x ({k} x {self.vis_params:.4g} + {a} x "
               f"{self.vis_layers} x {self.vis_attn_dim} x {P}) = {self.vision_per_image():.4g}"
               f"   ({'trained' if self.vis_trained else 'frozen: forward only'})")
        proj = (f"projector per image: 6 N_p x image tokens = 6 x {self.proj_params:.4g} x {self.image_tokens} = "
                f"{self.projector_per_image():.4g}")
        step = (f"per step:            rows x T x LM + rows x (vision + projector) = {rows} x {T} x "
                f"{self.lm_per_token():.4g} + {rows} x ({self.vision_per_image():.4g} + "
                f"{self.projector_per_image():.4g}) = {self.per_step(rows):.4g} FLOPs   (attention share of LM: "
                f"{attn / self.lm_per_token():.1%})")
        return [lm, vis, proj, step]


def mfu(flops_per_step: float, seconds_per_step: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
    return flops_per_step / seconds_per_step / peak


def numel(p: torch.nn.Parameter) -> int:
    """Elements of ``p``, also when ZeRO-3 has partitioned it away (``ds_numel``)."""
    return int(getattr(p, "ds_numel", p.numel()))


def count_flops(model: torch.nn.Module, mode: str, seq_len: int, vis_trained: bool) -> FlopCount:
    """:class:`FlopCount` from a built family model (``model.lm``, ``model.vision``, ``model.projector``)."""
    lm = model.lm
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    named = dict(lm.named_parameters())  # tied weights once
    lora = sum(numel(p) for n, p in named.items() if "lora_" in n)
    n_lm = sum(numel(p) for n, p in named.items() if "lora_" not in n)
    emb, out = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    if emb is not out:
        n_lm -= numel(emb)
    lcfg = base.config
    head_dim = getattr(lcfg, "head_dim", None) or lcfg.hidden_size // lcfg.num_attention_heads
    vision = model.vision
    vcfg = vision.model.config
    used = vision.used_parameter_names()  # what the patch features depend on (a dry backward)
    vis_named = [(n, p) for n, p in vision.model.named_parameters() if n in used]
    n_vis = sum(numel(p) for n, p in vis_named if "position_embedding" not in n)
    tokens = int(vision.num_patches + vision.prefix_tokens)  # what the tower attends over (its dry forward)
    return FlopCount(mode=mode, lm_params=n_lm, lm_layers=lcfg.num_hidden_layers,
                     lm_attn_dim=lcfg.num_attention_heads * head_dim, seq_len=seq_len, lora_params=lora,
                     vis_params=n_vis, vis_layers=vcfg.num_hidden_layers, vis_attn_dim=vcfg.hidden_size,
                     vis_tokens=tokens, vis_trained=vis_trained,
                     proj_params=sum(numel(p) for p in model.projector.parameters()),
                     image_tokens=int(vision.num_patches))


@dataclass
class Case:
    """One measured configuration."""

    name: str  # "full" or "lora"
    lm: str  # key of LM_PRESETS
    vision: str = "vit-l"  # key of VISION_PRESETS
    micro_batch: int = 8
    seq_len: int = 2048  # LM positions per row (image tokens included)
    zero_stage: int = 2
    train_vision: bool = True  # full case only (LoRA keeps the vision encoder frozen)


def estimate_memory(case: Case, lora_params: int = 0) -> float:
    """Rough peak GPU bytes of ``case`` on one GPU (ZeRO on one rank partitions nothing).

    Trained parameters 16 B each (bf16 weight and gradient, fp32 master, two fp32 Adam moments),
    frozen ones 2 B; activations with checkpointing: one bf16 hidden state per LM layer
    boundary, one layer's recomputed activations (~34 bytes x hidden per position), and the
    logits (bf16, their fp32 copy and its gradient: 10 bytes per vocabulary entry per position).
    """
    shape, vis = LM_PRESETS[case.lm], VISION_PRESETS[case.vision]
    n_lm, n_vis = llama_params(shape), vit_params(vis)
    if case.name == "lora":
        weights = 2 * (n_lm + n_vis) + 16 * lora_params
    else:
        weights = 16 * n_lm + (16 if case.train_vision else 2) * n_vis
    positions = case.micro_batch * case.seq_len
    d = shape["hidden_size"]
    acts = positions * d * 2 * shape["num_hidden_layers"] + positions * d * 34 + positions * LM_COMMON["vocab_size"] * 10
    return float(weights + acts)


def pick_lm(gpu_bytes: float, case: Case, headroom: float = 0.85) -> str:
    """The largest of :data:`FULL_LADDER` whose :func:`estimate_memory` fits ``headroom`` of the GPU."""
    for name in FULL_LADDER:
        if estimate_memory(dataclass_replace(case, lm=name)) <= headroom * gpu_bytes:
            return name
    from configs.schema import ConfigError

    raise ConfigError("", f"bench gpu: no LM of {list(FULL_LADDER)} fits {gpu_bytes / 2**30:.0f} GiB at micro-batch "
                                   f"{case.micro_batch} x {case.seq_len}: lower --micro-batch or --seq-len")


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def case_config(cfg, case: Case, precision: str):
    """The run config with the case's random-initialised LM / vision shapes and training settings."""
    cfg = copy.deepcopy(cfg)
    cfg.model.lm.path = None
    cfg.model.lm.hf_config = dict(LM_COMMON, **LM_PRESETS[case.lm])
    cfg.model.vision.path = None
    cfg.model.vision.hf_config = dict(VISION_PRESETS[case.vision])
    cfg.model.vision.image_size = VISION_PRESETS[case.vision]["image_size"]
    cfg.model.max_text_len = case.seq_len
    t = cfg.train
    t.tuning, t.train_vision = case.name, case.train_vision and case.name == "full"
    t.stages = []
    t.precision, t.zero_stage, t.activation_checkpointing = precision, case.zero_stage, True
    t.micro_batch_size, t.grad_accum, t.max_steps, t.warmup_steps = case.micro_batch, 1, 10**6, 0
    t.packing.enabled = False
    t.offload_optimizer = t.offload_params = False
    return cfg


def _tokenizer(family):
    from trainer.bench.checkpoint import scratch_tokenizer

    return scratch_tokenizer(family)


def random_batch(model, rows: int, seq_len: int, device, dtype, seed: int, packed: int = 0) -> dict[str, torch.Tensor]:
    """``rows`` studies of ``seq_len`` LM positions each: one image (its patch tokens) + random text.

    ``packed`` > 1: each row holds that many studies of ``seq_len / packed`` positions (modeling/packing.py),
    the attention cut at the studies' boundaries.
    """
    if packed > 1:
        from modeling.packing import pack_batch

        flat = random_batch(model, rows * packed, seq_len // packed, "cpu", dtype, seed)
        out = pack_batch(flat, seq_len, model.image_token_id, int(model.vision.num_patches))
        out.pop("lm_positions", None)
        out.pop("attention_mask", None)
        return {k: v.to(device) for k, v in out.items() if torch.is_tensor(v)}
    g = torch.Generator().manual_seed(seed)
    vis = model.vision
    size = vis.image_size
    text = seq_len - int(vis.num_patches) + 1  # the placeholder becomes num_patches positions
    if text < 2:
        raise ValueError(f"seq_len {seq_len} leaves no room for text after {vis.num_patches} image tokens")
    vocab = model.lm.get_input_embeddings().num_embeddings
    ids = torch.randint(5, vocab, (rows, text), generator=g)
    ids[:, 0] = model.image_token_id
    batch = {"pixel_values": torch.randn(rows, 3, size, size, generator=g).to(dtype),
             "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return {k: v.to(device) for k, v in batch.items()}


def plan_name(requested: str, device, dtype) -> str:
    from modeling.attention import plan_attention

    return plan_attention(requested, device, dtype).packed


def attention_path(device: torch.device) -> str:
    from modeling.attention import flash_available

    if device.type != "cuda":
        return "SDPA (CPU)"
    if flash_available(device):
        import flash_attn

        return f"flash-attn {flash_attn.__version__}"
    return "PyTorch SDPA, flash backend only (sdpa_kernel)"


@contextlib.contextmanager
def _build_context(device: torch.device, dtype: torch.dtype, zero3: bool, strategy):
    """Create parameters directly on the device in ``dtype`` (ZeRO-3: partitioned as created)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if zero3:
            with strategy.model_init_context():
                yield
        else:
            with torch.device(device):
                yield
    finally:
        torch.set_default_dtype(old)


@dataclass
class CaseResult:
    case: Case
    params: dict[str, int] = field(default_factory=dict)
    flops: Optional[FlopCount] = None
    step_s: float = 0.0
    tokens_per_s: float = 0.0
    images_per_s: float = 0.0
    peak_memory: Optional[float] = None  # bytes (CUDA only)
    attention: str = ""
    precision: str = "bf16"


def run_case(cfg, case: Case, *, device: str = "cuda", precision: str = "bf16", steps: int = 10,
             warmup: int = 3, packed: int = 0, attention: Optional[str] = None) -> CaseResult:
    """Build ``case`` and time ``steps`` training steps after ``warmup`` (the process group must exist).

    ``packed``: studies per row (0: one study per row, unpadded); ``attention``: ``model.attention`` override.
    """
    from modeling.family import build_family
    from modeling.tuning import apply_tuning
    from trainer.strategy import DeepSpeedStrategy

    dev = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cfg = case_config(cfg, case, precision)
    if attention is not None:
        cfg.model.attention = attention
    family = build_family(cfg.model)
    tok = _tokenizer(family)
    strategy = DeepSpeedStrategy(cfg.train, world_size=1, rank=0, use_gpu=dev.type == "cuda")
    torch.manual_seed(cfg.seed)
    with _build_context(dev, dtype, case.zero_stage == 3, strategy):
        model = family.build_model(tok)
        groups = apply_tuning(model, family, cfg.train.resolved_stages()[0].spec(cfg.train.lora))
    model.enable_activation_checkpointing()
    flops = count_flops(model, case.name, case.seq_len, vis_trained=cfg.train.train_vision)
    params = {"total": sum(numel(p) for p in model.parameters()),
              "trainable": sum(numel(p) for p in model.parameters() if p.requires_grad)}
    strategy.setup(model, groups=groups)
    batches = [random_batch(model, case.micro_batch, case.seq_len, strategy.device, dtype, seed=s, packed=packed)
               for s in range(2)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    kernels = contextlib.nullcontext()
    if dev.type == "cuda":
        from modeling.attention import flash_available

        if not flash_available(dev) and not packed:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            kernels = sdpa_kernel([SDPBackend.FLASH_ATTENTION])
        torch.cuda.reset_peak_memory_stats()
    with kernels:
        for i in range(warmup + steps):
            if i == warmup:
                sync()
                t0 = time.perf_counter()
            strategy.backward_and_step(strategy.forward(batches[i % 2]).loss)
        sync()
    dt = (time.perf_counter() - t0) / steps
    res = CaseResult(case=case, params=params, flops=flops, step_s=dt,
                     tokens_per_s=case.micro_batch * case.seq_len / dt, images_per_s=case.micro_batch / dt,
                     peak_memory=float(torch.cuda.max_memory_allocated()) if dev.type == "cuda" else None,
                     attention=attention_path(dev) if not packed else
                     f"packed x{packed}: {plan_name(cfg.model.attention, dev, dtype)}", precision=precision)
    strategy.teardown()
    strategy.release_model_init_context()  # the next case may be another ZeRO stage
    del model, batches
    return res


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def report(res: CaseResult, peak: Optional[float]) -> list[str]:
    c, f = res.case, res.flops
    step_flops = f.per_step(c.micro_batch)
    lines = [f"[{c.name}] LM {c.lm} ({_count(f.lm_params)} matmul parameters"
             + (f", LoRA {_count(f.lora_params)}" if c.name == "lora" else "")
             + f"), vision {c.vision} ({_count(f.vis_params)}, {'trained' if f.vis_trained else 'frozen'}), "
             f"{_count(res.params['trainable'])} of {_count(res.params['total'])} parameters trained; "
             f"ZeRO-{c.zero_stage}, {res.precision}, activation checkpointing, attention: {res.attention}",
             f"  micro-batch {c.micro_batch} x {c.seq_len} positions ({f.image_tokens} image + "
             f"{c.seq_len - f.image_tokens} text), step {res.step_s * 1e3:.1f} ms, "
             f"{res.tokens_per_s:,.0f} tokens/s, {res.images_per_s:.1f} images/s, peak memory "
             + (f"{res.peak_memory / 2**30:.1f} GiB" if res.peak_memory is not None else "n/a")
             + f" (estimate {estimate_memory(c, f.lora_params) / 2**30:.1f} GiB)"]
    lines += ["  " + line for line in f.formula(c.micro_batch)]
    achieved = step_flops / res.step_s
    if peak:
        lines.append(f"  MFU = {step_flops:.4g} / {res.step_s:.4f} s / {peak / 1e12:.1f} TFLOP/s = "
                     f"{achieved / 1e12:.1f} / {peak / 1e12:.1f} = {mfu(step_flops, res.step_s, peak):.1%}"
                     + ("   (goal >= 45%)" if c.name == "full" else ""))
    else:
        lines.append(f"  {achieved / 1e12:.1f} TFLOP/s achieved; MFU n/a: unknown peak for this device "
                     f"(pass --peak-tflops)")
    return lines


def bench_gpu(cfg, cases=("full", "lora"), lm: Optional[str] = None, lora_lm: str = LORA_LM,
              micro_batch: int = 8, seq_len: int = 2048, steps: int = 10, warmup: int = 3, zero_stage: int = 2,
              peak_tflops: Optional[float] = None) -> list[CaseResult]:
    """Run the cases on GPU 0 and print them; the caller has checked that CUDA is available."""
    os.environ["DS_ACCELERATOR"] = "cuda"  # before DeepSpeed is imported: this process trains on the GPU
    import gc

    from trainer.strategy import DeepSpeedStrategy, single_process_env

    single_process_env()

    torch.cuda.set_device(0)
    DeepSpeedStrategy.init_distributed(True)
    name = torch.cuda.get_device_name(0)
    total = torch.cuda.get_device_properties(0).total_memory
    peak = peak_tflops * 1e12 if peak_tflops else peak_flops(name)
    print(f"device: {name} ({total / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"peak dense bf16 {peak / 1e12:.1f} TFLOP/s" if peak else f"device: {name}: peak unknown")
    out = []
    for which in cases:
        if which == "full":
            case = Case("full", lm or "llama-3b", micro_batch=micro_batch, seq_len=seq_len, zero_stage=zero_stage,
                        train_vision=cfg.train.train_vision)
            if lm is None:
                case.lm = pick_lm(total, case)
        else:
            case = Case("lora", lora_lm, micro_batch=micro_batch, seq_len=seq_len, zero_stage=zero_stage)
        res = run_case(cfg, case, steps=steps, warmup=warmup)
        print("\n".join(report(res, peak)), flush=True)
        out.append(res)
        gc.collect()
        torch.cuda.empty_cache()
    if len(out) == 2:
        a, b = out
        print(f"LoRA / full fine-tuning tokens/s: {b.tokens_per_s / a.tokens_per_s:.2f}   "
              f"(different LM sizes: {a.case.lm} vs {b.case.lm}; NeMo's same-model ratio is ~1.47)")
    return out
