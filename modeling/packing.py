"""Sequence packing: several studies share one LM row, each still attending only to itself.

Why: a right-padded batch of reports wastes a fifth of every step on padding (reports vary
from a line to a page).  Packing turns a collated batch of B studies into fewer, nearly
equally long rows; nothing else about the step changes:

* the batch still holds the same B studies (the reader's position, and so exact resume, is
  untouched; the packing is a pure function of the batch);
* ``segment_ids`` (0 = padding, 1..k = the k-th study of the row) replaces ``attention_mask``;
  every per-study tensor (``pixel_values``, ``masks``, ``sample_weight``, ...) and list
  (``keys``, ``study_ids``) is permuted to the packed, row-major study order, so image
  placeholders are met in the same order as their images (``splice_image_features``);
* position ids restart at 0 for each study (:func:`segment_position_ids`);
* attention is block-diagonal causal: a 4D boolean mask for SDPA/eager
  (:func:`segment_attention_mask`), or flash-attn's varlen kernel on CUDA
  (:func:`varlen_kwargs`, picked up by ``modeling.attention``);
* loss weights stay per study (``sample_weight`` is still one number per study).

Rows are filled by longest-processing-time first into the fewest rows of at most
``max_len`` LM positions (text + image tokens), trying one or two more rows when that pads
less, so rows end up nearly equal and the batch is padded only to its longest row.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from modeling.config import PackingConfig  # noqa: F401  (the config lives with the other model configs)


def plan_rows(costs: list[int], max_len: int, extra_tries: int = 2) -> list[list[int]]:
    """Indices of ``costs`` grouped into rows of total <= ``max_len``; the plan that pads least.

    Longest first, each into the currently shortest row (LPT).  Rows are returned in the order of
    their first study, each row's studies in batch order: a deterministic function of ``costs``.
    """
    if not costs:
        return []
    big = max(costs)
    if big > max_len:
        raise ValueError(f"a study needs {big} LM positions, more than packing max_len {max_len}")
    total = sum(costs)
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    best, best_eff = None, -1.0
    n = max(1, -(-total // max_len))
    tried = 0
    while n <= len(costs) and tried <= extra_tries:
        loads, rows = [0] * n, [[] for _ in range(n)]
        for i in order:
            r = min(range(n), key=lambda j: (loads[j], j))
            loads[r] += costs[i]
            rows[r].append(i)
        if max(loads) <= max_len:
            tried += 1
            eff = total / (n * max(loads))
            if eff > best_eff + 1e-12:
                best, best_eff = rows, eff
        n += 1
    assert best is not None  # n == len(costs) always fits (every cost <= max_len)
    return sorted((sorted(r) for r in best if r), key=lambda r: r[0])


def _permute(value: Any, perm: list[int], n: int) -> Any:
    """Per-study tensors/lists (first dimension ``n``) in the new study order; anything else as is."""
    if torch.is_tensor(value) and value.ndim >= 1 and value.shape[0] == n:
        return value[torch.tensor(perm, dtype=torch.long)]
    if isinstance(value, list) and len(value) == n:
        return [value[i] for i in perm]
    return value


def pack_batch(batch: dict, max_len: int, image_token_id: int, image_tokens: int) -> dict:
    """A right-padded training batch (one row per study) -> packed rows with ``segment_ids``.

    ``image_tokens`` is the number of LM positions one ``<image>`` placeholder becomes.
    Adds ``lm_positions`` (real, slots) of the packed LM input as a plain tuple (not a tensor:
    it never reaches the model) for the step meter.
    """
    if "labels" not in batch:
        raise ValueError("packing is for training batches (with labels)")
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    n = ids.shape[0]
    lens = mask.sum(1).tolist()
    n_img = (ids == image_token_id).sum(1).tolist()
    costs = [int(l + k * (image_tokens - 1)) for l, k in zip(lens, n_img)]
    rows = plan_rows(costs, max_len)
    perm = [i for r in rows for i in r]
    width = max(sum(lens[i] for i in r) for r in rows)
    new_ids = ids.new_full((len(rows), width), _pad_id(ids, mask))
    new_labels = labels.new_full((len(rows), width), -100)
    seg = torch.zeros((len(rows), width), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for s, i in enumerate(members, start=1):
            length = int(lens[i])
            new_ids[r, at:at + length] = ids[i, :length]
            new_labels[r, at:at + length] = labels[i, :length]
            seg[r, at:at + length] = s
            at += length
    out = {k: _permute(v, perm, n) for k, v in batch.items() if k not in ("input_ids", "labels", "attention_mask")}
    out.update(input_ids=new_ids, labels=new_labels, segment_ids=seg)
    lm_len = [sum(costs[i] for i in r) for r in rows]
    out["lm_positions"] = (sum(lm_len), len(rows) * max(lm_len))
    return out


def _pad_id(ids: torch.Tensor, mask: torch.Tensor) -> int:
    pads = ids[mask == 0]
    return int(pads[0]) if pads.numel() else 0


def packing_collate(collate: Callable[[list], dict], cfg: PackingConfig, image_token_id: int,
                    image_tokens: int) -> Callable[[list], dict]:
    """The family's collate followed by :func:`pack_batch` (a plain function of the batch)."""

    def packed(items: list) -> dict:
        return pack_batch(collate(items), cfg.max_len, image_token_id, image_tokens)

    return packed


# ---- what the model does with segment ids (after image features are spliced in) --------------
def segment_position_ids(seg: torch.Tensor) -> torch.Tensor:
    """(B, L) segment ids -> position ids restarting at 0 at each study (padding continues counting)."""
    length = seg.shape[1]
    idx = torch.arange(length, device=seg.device).expand_as(seg)
    start = torch.ones_like(seg, dtype=torch.bool)
    start[:, 1:] = seg[:, 1:] != seg[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(1).values
    return idx - first


def segment_attention_mask(seg: torch.Tensor) -> torch.Tensor:
    """(B, L) segment ids -> (B, 1, L, L) bool, True = attend: causal within a study only.

    A padding position sees itself only (a fully masked row would give NaN in some kernels);
    nothing real sees padding, and padding carries no loss.
    """
    length = seg.shape[1]
    same = seg[:, :, None] == seg[:, None, :]
    real = (seg[:, None, :] > 0) | torch.eye(length, dtype=torch.bool, device=seg.device)[None]
    causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    return (same & real & causal)[:, None]


def varlen_kwargs(seg: torch.Tensor) -> dict:
    """flash-attn varlen arguments for the flattened (B * L) tokens: every segment (padding runs too)."""
    flat = seg.flatten()
    row = torch.arange(seg.shape[0], device=seg.device).repeat_interleave(seg.shape[1])
    start = torch.ones_like(flat, dtype=torch.bool)
    start[1:] = (flat[1:] != flat[:-1]) | (row[1:] != row[:-1])
    starts = torch.nonzero(start).flatten()
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}


def token_weights(seg: torch.Tensor, sample_weight: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Per-study weights (studies in row-major packed order) spread over their tokens; padding 0."""
    if sample_weight is None:
        return None
    starts = torch.zeros_like(seg, dtype=torch.bool)
    starts[:, 0] = seg[:, 0] > 0
    starts[:, 1:] = (seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] > 0)
    study = torch.cumsum(starts.flatten().long(), 0).view_as(seg) - 1  # global study index of each token
    w = sample_weight.to(seg.device, torch.float32)[study.clamp(min=0)]
    return torch.where(seg > 0, w, torch.zeros_like(w))
