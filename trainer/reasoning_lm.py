"""The local causal-LM backend of ``rrg annotate reasoning`` (any Hugging Face causal-LM directory).

Each training study's report goes into the configured prompt (``data.reasoning.prompt``); the
LM's continuation is kept as the reasoning chain when it parses as a four-module chain
(shards/reasoning/chain.py ``parse_chain``).  Anything else is *malformed*: the study gets the
template chain instead, marked ``backend: template_fallback, malformed: true`` so the
summary counts it.  The reflection variant always comes from the template rule, whose
corrupted-span offsets are exact.  The model is loaded once per task process, offline.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from shards.reasoning.annotate import SIDECAR, in_split
from shards.reasoning.annotate import planned_chain
from shards.reasoning.chain import parse_chain, perception_lines

_LOADED: dict[str, Any] = {}


def _load(path: str):
    if path not in _LOADED:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        _LOADED[path] = (tok, model)
    return _LOADED[path]


def lm_chain(report: str, context: dict) -> Optional[str]:
    """The LM's chain for one report, or None when its output is malformed."""
    import torch

    tok, model = _load(context["lm_path"])
    organs = ", ".join(o for o, _, _ in perception_lines(report)) or "none"
    prompt = context["prompt"].format(report=report.strip(), organs=organs)
    ids = tok(prompt, return_tensors="pt")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=context["max_new_tokens"], do_sample=False, pad_token_id=pad)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return text if parse_chain(text) is not None else None


def lm_members(sample, context: dict) -> Optional[dict[str, bytes]]:
    """Sidecar members of one study with the local-LM backend (template fallback when malformed)."""
    if not in_split(sample, context):
        return None
    entry = planned_chain(sample, context)
    chain = lm_chain(sample.report, context)
    if chain is None:
        entry.update(backend="template_fallback", malformed=True)
    else:
        if entry.get("corruption") is None and entry.get("reflection") == entry["reasoning"]:
            entry["reflection"] = chain  # a study planned not to reflect: its reflection row is its chain
        entry.update(reasoning=chain, final_report=parse_chain(chain)["final report"], backend="hf_lm")
    return {f"{SIDECAR}.json": json.dumps(entry).encode()}
