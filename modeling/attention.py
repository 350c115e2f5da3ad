"""The one attention function of rrg, its hook into Hugging Face models, and which kernel each batch gets.

``attention(q, k, v, causal=...)`` takes (batch, heads, seq, dim) tensors and dispatches to flash-attn
(CUDA, fp16/bf16, no arbitrary mask), PyTorch SDPA, or an eager reference written out in plain math (for
tests and debugging).  Grouped-query attention is handled here, so callers never repeat heads themselves.

``model.attention`` (auto | flash | flex | sdpa | eager) is resolved per device and dtype by
:func:`plan_attention` into one kernel per batch layout, logged and stamped into ``metrics.json``:

* **packed** rows (several studies per row, ``segment_ids``): a variable-length kernel over the flattened
  tokens cut at the studies' boundaries, never a dense (L x L) mask: flash-attn's varlen kernel; else
  PyTorch's own ``torch.nn.attention.varlen`` (its flash kernel, CUDA); else FlexAttention with a document
  block mask (CUDA, compiled); on CPU, SDPA run per study (``segments``: its fused CPU kernel, causal, no
  mask; FlexAttention has no CPU backward).  ``sdpa`` / ``eager`` keep the dense block-diagonal mask (the
  reference the others are tested against);
* **padded** training rows (right-padded: every real token precedes the row's padding): causal attention
  alone is exact for every real token (no real token can see a later padding position), so no mask is
  passed and SDPA (or flash-attn) runs its fused causal kernel; the outputs at padding positions, which carry
  no loss, are all that changes (what unpadding and re-padding would give);
* **unpadded** rows: SDPA's flash / cuDNN / fused CPU kernel (``is_causal``), or flash-attn;
* **generation** (left-padded prompts, a KV cache): SDPA with the padding mask.

Hugging Face models reach the same function through transformers' ``AttentionInterface``:
:func:`register_hf_attention` registers it under ``rrg`` (auto), ``rrg_sdpa``, ``rrg_eager``, ``rrg_flex``
and ``rrg_fa`` (flash; the name must not contain "flash", which transformers treats specially), plus the
matching mask builders in ``AttentionMaskInterface`` so padded batches receive a boolean 4D mask (True =
attend).  Packed rows pass ``cu_seq_lens_q/k`` + ``max_length_q/k`` (transformers forwards them to the
attention function).  No monkey-patching of model code.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

import functools
from dataclasses import asdict, dataclass

IMPLS = ("auto", "flash", "flex", "sdpa", "eager")
HF_NAMES = {"auto": "rrg", "sdpa": "rrg_sdpa", "eager": "rrg_eager", "flash": "rrg_fa", "flex": "rrg_flex"}
VARLEN = ("flash_attn", "torch_varlen", "flex", "segments")  # packed kernels fed cu_seq_lens (no dense mask)


def flash_available(device: torch.device | str | None = None) -> bool:
    """flash-attn is importable and the device is CUDA."""
    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        return False
    return device is None or torch.device(device).type == "cuda"


def resolve_impl(requested: str, device: torch.device | str) -> str:
    """The kernel :func:`attention` (unpacked tensors) uses for ``requested`` on ``device``.

    "auto" means flash where available, else SDPA; an explicit "flash" where it
    is not available falls back to SDPA too (flash-attn is optional); "flex" is a packed-rows choice.
    """
    if requested not in IMPLS:
        raise ValueError(f"unknown attention implementation {requested!r}; known: {list(IMPLS)}")
    if requested in ("auto", "flash"):
        return "flash" if flash_available(device) else "sdpa"
    return "sdpa" if requested == "flex" else requested


@functools.lru_cache(maxsize=None)
def torch_varlen_available() -> bool:
    """PyTorch's own variable-length attention (``torch.nn.attention.varlen``, a flash kernel) is there and CUDA runs."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class AttentionPlan:
    """The kernel each batch layout gets (see the module docs)."""

    requested: str
    packed: str  # flash_attn | torch_varlen | flex | segments | sdpa_mask | eager
    padded: str  # causal (no mask: exact for right-padded rows) | sdpa_mask | eager
    unpadded: str  # flash_attn | sdpa | eager
    generation: str  # sdpa_mask | eager

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def plan_attention(requested: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> AttentionPlan:
    """Resolve ``model.attention`` for ``device`` and ``dtype`` (deterministic: every rank and every call agree)."""
    if requested not in IMPLS:
        raise ValueError(f"unknown attention implementation {requested!r}; known: {list(IMPLS)}")
    dev = torch.device(device)
    cuda, half = dev.type == "cuda", dtype in (torch.float16, torch.bfloat16)
    if requested == "eager":
        return AttentionPlan("eager", "eager", "eager", "eager", "eager")
    if requested == "sdpa":
        return AttentionPlan("sdpa", "sdpa_mask", "causal", "sdpa", "sdpa_mask")
    flash = cuda and half and flash_available(dev)
    if requested == "flex":
        packed = "flex" if cuda else "segments"  # FlexAttention has no backward on CPU
    elif flash:
        packed = "flash_attn"
    elif cuda and half and torch_varlen_available():
        packed = "torch_varlen"
    elif cuda and flex_available():
        packed = "flex"
    else:
        packed = "segments"
    return AttentionPlan(requested, packed, "causal", "flash_attn" if flash else "sdpa", "sdpa_mask")


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, S, D) -> (B, Hkv * n_rep, S, D), each kv head shared by n_rep query heads."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """Bottom-right aligned causal mask (True = attend): query i sees keys <= i + kv_len - q_len."""
    q_idx = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    return q_idx >= torch.arange(kv_len, device=device)[None, :]


def _combined_mask(q: torch.Tensor, k: torch.Tensor, causal: bool, attn_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """One mask (bool True=attend, or float additive) holding both causality and ``attn_mask``."""
    if not causal:
        return attn_mask
    cm = _causal_mask(q.shape[-2], k.shape[-2], q.device)
    if attn_mask is None:
        return cm
    if attn_mask.dtype == torch.bool:
        return attn_mask & cm
    return attn_mask.masked_fill(~cm, torch.finfo(attn_mask.dtype).min)


def eager_attention(q, k, v, *, causal: bool, attn_mask=None, dropout_p: float = 0.0, scale=None) -> torch.Tensor:
    """Reference math: softmax(q k^T * scale + mask) v.  Fully masked rows give zeros (as SDPA does)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-1, -2)).float() * scale
    mask = _combined_mask(q, k, causal, attn_mask)
    keep = None
    if mask is not None and mask.dtype == torch.bool:
        keep = mask
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1)
    if keep is not None:  # rows with no visible key: softmax of all -inf is NaN; make them zero
        probs = probs.masked_fill(~keep.any(dim=-1, keepdim=True), 0.0)
    probs = F.dropout(probs, p=dropout_p) if dropout_p > 0 else probs
    return (probs.to(v.dtype) @ v)


def _sdpa(q, k, v, *, causal: bool, attn_mask, dropout_p: float, scale) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    if attn_mask is None and (not causal or q.shape[-2] == k.shape[-2]):
        # mask-free path: lets PyTorch pick its fused kernels; enable_gqa avoids copying kv heads
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale,
                                              enable_gqa=n_rep > 1)
    mask = _combined_mask(q, k, causal, attn_mask)
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def _flash(q, k, v, *, causal: bool, dropout_p: float, scale) -> torch.Tensor:
    from flash_attn import flash_attn_func  # optional dependency, present only on CUDA machines

    # flash-attn wants (B, S, H, D), handles GQA natively and aligns causal masks bottom-right
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          dropout_p=dropout_p, softmax_scale=scale, causal=causal)
    return out.transpose(1, 2)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, *,
                     causal: bool, scale: Optional[float], backend: str, window: Optional[int] = None) -> torch.Tensor:
    """Attention over (T, H, D) tokens cut into sequences at ``cu`` (int32, T + 1 boundaries): each sequence sees
    only itself (causally, within ``window`` previous tokens when given).  Returns (T, Hq, D)."""
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func  # optional dependency, present only on CUDA machines

        win = (window - 1, 0) if window else (-1, -1)
        return flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len,
                                      max_seqlen_k=max_len, softmax_scale=scale, causal=causal, window_size=win)
    if backend == "torch_varlen":
        from torch.nn.attention.varlen import varlen_attn

        win = (window - 1, 0) if window else ((-1, 0) if causal else (-1, -1))
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, window_size=win,
                           enable_gqa=q.shape[1] != k.shape[1])
    if backend == "flex":
        return _flex_varlen(q, k, v, cu, causal=causal, scale=scale, window=window)
    if backend != "segments":
        raise ValueError(f"unknown varlen backend {backend!r}; known: {list(VARLEN)}")
    out = torch.empty_like(q)
    n_rep = q.shape[1] // k.shape[1]
    bounds = cu.tolist()
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        if s1 <= s0:
            continue
        qs, ks, vs = (t[s0:s1].transpose(0, 1)[None] for t in (q, k, v))  # (1, H, n, D)
        mask = None
        if window and s1 - s0 > window:  # a sliding-window layer over a long sequence: banded causal mask
            i = torch.arange(s1 - s0, device=q.device)
            mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
        out[s0:s1] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=causal and mask is None,
                                                    scale=scale, enable_gqa=n_rep > 1)[0].transpose(0, 1)
    return out


_BLOCK_MASKS: dict = {}


def _flex_varlen(q, k, v, cu, *, causal: bool, scale, window) -> torch.Tensor:
    """FlexAttention with a document mask built from ``cu`` (one block mask per batch, reused by every layer)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    total = q.shape[0]
    key = (tuple(cu.tolist()), causal, window, str(q.device))
    block = _BLOCK_MASKS.get(key)
    if block is None:
        doc = torch.searchsorted(cu[1:].to(torch.int64), torch.arange(total, device=q.device), right=True)

        def mask_mod(b, h, qi, ki):
            keep = doc[qi] == doc[ki]
            if causal:
                keep = keep & (qi >= ki)
            if window:
                keep = keep & (qi - ki < window)
            return keep

        block = create_block_mask(mask_mod, 1, None, total, total, device=q.device)
        _BLOCK_MASKS.clear()
        _BLOCK_MASKS[key] = block
    fn = _compiled_flex() if q.is_cuda else flex_attention
    out = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=block,
             scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out[0].transpose(0, 1)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def _hf_varlen(query, key, value, kw: dict, *, backend: str, causal: bool, scale, window) -> torch.Tensor:
    """Packed rows from transformers: (B, H, L, D) flattened to (B * L, H, D) tokens cut at ``cu_seq_lens``.

    Returns (B, L, H, D), the layout transformers expects back from an attention function.
    """
    bsz, _, length, _ = query.shape
    flat = [t.transpose(1, 2).reshape(bsz * length, t.shape[1], t.shape[3]) for t in (query, key, value)]
    out = varlen_attention(*flat, kw["cu_seq_lens_q"], int(kw["max_length_q"]), causal=causal, scale=scale,
                           backend=backend, window=window)
    return out.view(bsz, length, query.shape[1], query.shape[3])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              scale: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention on (batch, heads, seq, dim) tensors; returns (B, Hq, Sq, D).

    ``attn_mask``: bool (True = attend) or additive float, broadcastable to
    (B, Hq, Sq, Skv).  ``causal`` adds a bottom-right aligned causal mask.
    ``k``/``v`` may have fewer heads than ``q`` (GQA) if Hq is a multiple.
    """
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} not a multiple of key/value heads {k.shape[1]}")
    chosen = resolve_impl(impl, q.device)
    if chosen == "flash" and (attn_mask is not None or q.dtype not in (torch.float16, torch.bfloat16)):
        chosen = "sdpa"  # flash-attn takes no arbitrary masks and no fp32
    if chosen == "flash":
        return _flash(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)
    if chosen == "sdpa":
        return _sdpa(q, k, v, causal=causal, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return eager_attention(q, k, v, causal=causal, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


def _hf_forward(impl: str):
    """Adapter with transformers' attention-function signature, bound to one implementation."""

    def forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                is_causal: Optional[bool] = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if kwargs.get("softcap") is not None:
            raise ValueError("rrg attention does not support softcap")
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if kwargs.get("cu_seq_lens_q") is not None:  # packed rows (modeling/packing.py)
            backend = plan_attention(impl, query.device, query.dtype).packed
            if backend not in VARLEN:
                raise ValueError(f"attention '{impl}' on {query.device}: packed rows need a varlen kernel, got {backend}")
            if dropout:
                raise ValueError("rrg's packed attention has no attention dropout (set the model's attention_dropout 0)")
            window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
            return _hf_varlen(query, key, value, kwargs, backend=backend, causal=bool(causal), scale=scaling,
                              window=int(window) if window else None), None
        # a mask from the mask interface already holds causality (and padding); without one the
        # model is either bidirectional or plainly causal (no padding), which we apply here
        out = attention(query, key, value, causal=bool(causal) and attention_mask is None,
                        attn_mask=attention_mask, dropout_p=dropout, scale=scaling, impl=impl)
        return out.transpose(1, 2).contiguous(), None

    forward.__name__ = f"rrg_attention_{impl}"
    return forward


_registered = False


def register_hf_attention() -> None:
    """Register rrg's attention (and SDPA-style boolean masks) with transformers; idempotent."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    for impl, name in HF_NAMES.items():
        AttentionInterface.register(name, _hf_forward(impl))
        AttentionMaskInterface.register(name, sdpa_mask)
    _registered = True


def hf_attn_name(impl: str) -> str:
    """The ``attn_implementation`` string a Hugging Face model needs to run through :func:`attention`."""
    if impl not in HF_NAMES:
        raise ValueError(f"unknown attention implementation {impl!r}; known: {list(IMPLS)}")
    register_hf_attention()
    return HF_NAMES[impl]
