"""Which kernel each batch layout gets (``model.attention``), and that every one equals the eager reference.

On this CPU machine the packed path is SDPA run per study (``segments``); FlexAttention's document mask is
checked forward-only here (it has no CPU backward; on CUDA it trains, compiled); flash-attn and PyTorch's
own varlen kernel need CUDA (``scripts/device_check.sh`` checks them on the GPU machine).
"""
from __future__ import annotations

import pytest
import torch

from modeling.attention import VARLEN, eager_attention, plan_attention, varlen_attention
from modeling.packing import segment_attention_mask, varlen_kwargs


def packed_case(seed: int = 0, heads: int = 4, kv_heads: int = 2, dim: int = 16):
    """Two rows of packed studies (lengths 5, 9, 3 | 11, 4 + padding), GQA heads."""
    g = torch.Generator().manual_seed(seed)
    seg = torch.zeros(2, 18, dtype=torch.long)
    seg[0, :5], seg[0, 5:14], seg[0, 14:17] = 1, 2, 3
    seg[1, :11], seg[1, 11:15] = 1, 2
    q = torch.randn(2, heads, 18, dim, generator=g)
    k, v = (torch.randn(2, kv_heads, 18, dim, generator=g) for _ in range(2))
    return seg, q, k, v


def flat(t):  # (B, H, L, D) -> (B * L, H, D)
    return t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])


def reference(seg, q, k, v, window=None):
    mask = segment_attention_mask(seg)
    if window:
        i = torch.arange(seg.shape[1])
        mask = mask & ((i[:, None] - i[None, :]) < window)[None, None]
    return flat(eager_attention(q, k, v, causal=False, attn_mask=mask))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("window", [None, 4])
def test_segments_kernel_equals_the_eager_block_diagonal_reference(dtype, tol, window):
    seg, q, k, v = packed_case()
    kw = varlen_kwargs(seg)
    got = varlen_attention(*(flat(t.to(dtype)) for t in (q, k, v)), kw["cu_seq_lens_q"], kw["max_length_q"],
                           causal=True, scale=None, backend="segments", window=window)
    want = reference(seg, *(t.to(dtype).float() for t in (q, k, v)), window=window)
    real = seg.flatten() > 0  # padding positions carry no loss; compare the studies' tokens
    torch.testing.assert_close(got.float()[real], want[real], atol=tol, rtol=tol)


def test_flex_document_mask_equals_the_eager_reference_forward():
    seg, q, k, v = packed_case(seed=1)
    kw = varlen_kwargs(seg)
    with torch.no_grad():
        got = varlen_attention(flat(q), flat(k), flat(v), kw["cu_seq_lens_q"], kw["max_length_q"], causal=True,
                               scale=None, backend="flex")
    real = seg.flatten() > 0
    torch.testing.assert_close(got[real], reference(seg, q, k, v)[real], atol=1e-5, rtol=1e-5)


def test_plan_per_device_and_request():
    cpu = plan_attention("auto", "cpu", torch.bfloat16)
    assert (cpu.packed, cpu.padded, cpu.unpadded, cpu.generation) == ("segments", "causal", "sdpa", "sdpa_mask")
    assert plan_attention("sdpa", "cpu").packed == "sdpa_mask" and plan_attention("eager", "cpu").packed == "eager"
    assert plan_attention("flex", "cpu").packed == "segments"  # no FlexAttention backward on CPU
    assert plan_attention("flash", "cpu").unpadded == "sdpa"  # flash-attn is optional: falls back
    assert set(VARLEN) >= {cpu.packed}
    with pytest.raises(ValueError, match="unknown attention"):
        plan_attention("xformers", "cpu")


def tiny_lm(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from modeling.attention import hf_attn_name

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=hf_attn_name(attn)).eval()


def test_packed_rows_reach_the_varlen_kernel_and_padded_rows_need_no_mask(monkeypatch):
    """Through a real HF model: a packed batch calls the varlen kernel with the studies' boundaries (no dense mask),
    and equals the eager dense-mask reference; right-padded training rows run unmasked and equal the masked run on
    every real token."""
    import modeling.attention as A
    from modeling.vlm import lm_logits

    seg, *_ = packed_case()
    embeds = torch.randn(2, 18, 32, generator=torch.Generator().manual_seed(3))
    calls = []
    real_varlen = A.varlen_attention

    def spy(*args, **kw):
        calls.append((kw["backend"], tuple(args[3].tolist())))
        return real_varlen(*args, **kw)

    monkeypatch.setattr(A, "varlen_attention", spy)
    with torch.no_grad():
        auto = lm_logits(tiny_lm("auto"), embeds, seg, packed=True, attn_impl="auto")
        eager = lm_logits(tiny_lm("eager"), embeds, seg, packed=True, attn_impl="eager")
    assert calls and all(b == "segments" for b, _ in calls) and len(calls) == 2  # one per layer
    assert calls[0][1] == tuple(varlen_kwargs(seg)["cu_seq_lens_q"].tolist())
    real = seg > 0
    torch.testing.assert_close(auto[real], eager[real], atol=1e-5, rtol=1e-5)

    mask = torch.ones(2, 18, dtype=torch.long)
    mask[1, 12:] = 0  # right padding
    with torch.no_grad():
        lm = tiny_lm("auto")
        unmasked = lm_logits(lm, embeds, mask, training_rows=True)
        masked = lm(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(unmasked[mask.bool()], masked[mask.bool()], atol=1e-5, rtol=1e-5)
    left = mask.flip(1)  # left padding (generation prompts) keeps its mask
    with torch.no_grad():
        torch.testing.assert_close(lm_logits(lm, embeds, left, training_rows=True)[left.bool()],
                                   lm(inputs_embeds=embeds, attention_mask=left).logits[left.bool()])
