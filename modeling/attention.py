"""The one attention function of rrg, and its hook into Hugging Face models.

``attention(q, k, v, causal=...)`` takes (batch, heads, seq, dim) tensors and
dispatches to flash-attn (CUDA, fp16/bf16, no arbitrary mask), PyTorch SDPA,
or an eager reference written out in plain math (for tests and debugging).
Grouped-query attention (fewer key/value heads than query heads) is handled
here, so callers never repeat heads themselves.

Hugging Face models reach the same function through transformers'
``AttentionInterface``: :func:`register_hf_attention` registers it under the
names ``rrg`` (auto), ``rrg_sdpa``, ``rrg_eager`` and ``rrg_fa`` (flash; the
name must not contain "flash", which transformers treats specially), plus the
matching mask builders in ``AttentionMaskInterface`` so padded batches receive
a boolean 4D mask (True = attend).  No monkey-patching of model code.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

IMPLS = ("auto", "flash", "sdpa", "eager")
HF_NAMES = {"auto": "rrg", "sdpa": "rrg_sdpa", "eager": "rrg_eager", "flash": "rrg_fa"}


def flash_available(device: torch.device | str | None = None) -> bool:
    """flash-attn is importable and the device is CUDA."""
    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        return False
    return device is None or torch.device(device).type == "cuda"


def resolve_impl(requested: str, device: torch.device | str) -> str:
    """Turn a requested implementation into the one used on ``device``.

    "auto" means flash where available, else SDPA; an explicit "flash" where it
    is not available falls back to SDPA too (flash-attn is optional).
    """
    if requested not in IMPLS:
        raise ValueError(f"unknown attention implementation {requested!r}; known: {list(IMPLS)}")
    if requested in ("auto", "flash"):
        return "flash" if flash_available(device) else "sdpa"
    return requested


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


def _flash_varlen(q, k, v, kw: dict, *, causal: bool, dropout_p: float, scale) -> torch.Tensor:
    """Packed rows on flash-attn: (B, H, L, D) flattened to (B * L, H, D) tokens cut at ``cu_seq_lens``.

    Returns (B, L, H, D), the layout transformers expects back from an attention function.
    """
    from flash_attn import flash_attn_varlen_func  # optional dependency, present only on CUDA machines

    bsz, _, length, _ = q.shape
    flat = [t.transpose(1, 2).reshape(bsz * length, t.shape[1], t.shape[3]) for t in (q, k, v)]
    out = flash_attn_varlen_func(*flat, cu_seqlens_q=kw["cu_seq_lens_q"], cu_seqlens_k=kw["cu_seq_lens_k"],
                                 max_seqlen_q=kw["max_length_q"], max_seqlen_k=kw["max_length_k"],
                                 dropout_p=dropout_p, softmax_scale=scale, causal=causal)
    return out.view(bsz, length, q.shape[1], q.shape[3])


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
        if kwargs.get("cu_seq_lens_q") is not None and resolve_impl(impl, query.device) == "flash" \
                and query.dtype in (torch.float16, torch.bfloat16):  # packed rows (modeling/packing.py)
            return _flash_varlen(query, key, value, kwargs, causal=bool(causal), dropout_p=dropout, scale=scaling), None
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
