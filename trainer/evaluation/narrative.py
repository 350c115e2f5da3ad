"""The narrative-bias probe (LLaVA-TA's motivating experiment): how much does the image still matter
once the model has read the start of the true report?

For K = 1 .. ``eval.narrative_bias.max_k``: every study whose reference has at least K + 1 sentences
gets its first ``n - K`` sentences appended to the prompt as the beginning of the report, and the
model completes the rest, once with the real image and once with the family's ``black`` ablation.
The completion is scored against the reference's last K sentences only.  Gain = real - black.

The prefix is **the reference report**: an oracle input by definition, stamped in metrics.json
(``narrative_bias_oracle_inputs``).  It is appended in token space, as training showed the model its
report: the template's report text (``template.target``) is tokenised whole and the tokens that fall
inside the prefix's characters are kept (so a sub-word split at the boundary is the training one).

Any family whose eval batches carry one left-padded prompt row per study (``input_ids`` +
``attention_mask``, generation returning new tokens only) works unchanged: llava_rad, radixpert,
r2genkg.  A family that fans a study out into several rows (LLaVA-TA topics) is refused with a
one-line error, and so is one whose tokenizer has no offsets.  Studies too short for a K are given
weight 0 in that pass (the family skips them) and counted in the row's ``n``.
"""
from __future__ import annotations

import re
from typing import Optional

import torch

from configs.schema import ConfigError

ORACLE_NOTE = "reference report prefix (the first n-K sentences of the true report)"
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(report: str) -> list[str]:
    """Sentences of a report as written (punctuation kept), empty pieces dropped."""
    return [s.strip() for s in _SENT.split(report.strip()) if s.strip()]


def prefix_and_tail(report: str, k: int) -> Optional[tuple[str, str]]:
    """(first n-K sentences, last K sentences), or None when the report has fewer than K + 1 sentences."""
    sents = split_sentences(report)
    if len(sents) < k + 1:
        return None
    return " ".join(sents[:-k]), " ".join(sents[-k:])


def prefix_token_ids(tok, template, prefix: str, report: str) -> list[int]:
    """Tokens of ``template.target(report)`` that lie inside the prefix's characters (see the docstring)."""
    text = template.target(report)
    cut = len(template.report_prefix) + len(prefix)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc.get("offset_mapping")
    if offs is None:
        raise ConfigError("--narrative-bias", "the model's tokenizer gives no character offsets (a fast tokenizer is needed)")
    return [i for i, (a, b) in zip(ids, offs) if b <= cut and b > a]


def with_prefixes(batch: dict, prefixes: list[Optional[list[int]]], pad_id: int) -> dict:
    """The batch with each real row's prompt followed by its prefix tokens (re-left-padded); rows with
    ``None`` get weight 0."""
    if "input_ids" not in batch or "attention_mask" not in batch:
        raise ConfigError("--narrative-bias", "this family's eval batches have no input_ids/attention_mask prompt rows")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    real = [sid for sid, w in zip(batch["study_ids"], batch["sample_weight"].tolist()) if w > 0]
    if len(set(real)) != len(real):
        raise ConfigError("--narrative-bias", "this family generates from several rows per study (e.g. one per "
                          "topic); the probe needs one prompt row per study")
    rows = []
    for i in range(ids.shape[0]):
        prompt = ids[i][mask[i].bool()].tolist()
        rows.append(prompt + (prefixes[i] or []))
    length = max(len(r) for r in rows)
    new_ids = torch.full((len(rows), length), pad_id, dtype=ids.dtype)
    new_mask = torch.zeros((len(rows), length), dtype=mask.dtype)
    for i, r in enumerate(rows):
        new_ids[i, length - len(r):] = torch.tensor(r, dtype=ids.dtype)
        new_mask[i, length - len(r):] = 1
    weight = batch["sample_weight"].clone()
    for i, p in enumerate(prefixes):
        if p is None:
            weight[i] = 0.0
    return {**batch, "input_ids": new_ids, "attention_mask": new_mask, "sample_weight": weight}


def narrative_batches(batches, tok, template, k: int, limit: int = 0):
    """Eval batches turned into K-completion batches; ``references`` become the last K sentences.
    ``limit`` > 0: only the first ``limit`` real studies of the stream (the same ones for every K)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    seen = 0
    for batch in batches:
        if limit and seen >= limit:
            return
        if limit:
            weights = batch["sample_weight"].clone()
            for i, w in enumerate(weights.tolist()):
                if w > 0:
                    seen += 1
                    if seen > limit:
                        weights[i] = 0.0
            batch = {**batch, "sample_weight": weights}
        prefixes, tails = [], []
        for i, ref in enumerate(batch["references"]):
            split = prefix_and_tail(ref, k) if batch["sample_weight"][i] > 0 else None
            if split is None:
                prefixes.append(None), tails.append("")
                continue
            prefix, tail = split
            prefixes.append(prefix_token_ids(tok, template, prefix, ref)), tails.append(tail)
        if not any(p is not None for p in prefixes):
            continue
        out = with_prefixes(batch, prefixes, pad)
        out["references"] = tails
        yield out


def rows_from_scores(scored: dict[int, tuple[dict, dict]]) -> list[dict]:
    """metrics.json["narrative_bias"]: per K, ``<key>_real``, ``<key>_black`` and ``gain_<key>`` of every float key."""
    out = []
    for k in sorted(scored):
        real, black = scored[k]
        row = {"k": k, "n": real.get("n", 0)}
        for key, v in real.items():
            if (isinstance(v, float) and not key.endswith(("_ci_low", "_ci_high")) and not key.startswith("ce_f1_")
                    and isinstance(black.get(key), float)):
                row[f"{key}_real"], row[f"{key}_black"], row[f"gain_{key}"] = v, black[key], v - black[key]
        out.append(row)
    return out
