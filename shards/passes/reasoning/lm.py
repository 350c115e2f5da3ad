"""The local causal-LM backend of ``rrg annotate reasoning`` (any Hugging Face causal-LM directory).

Each training study's report goes into the configured prompt (``data.passes.reasoning.prompt``); the
LM's continuation is kept as the reasoning chain when it parses as a four-module chain
(shards/passes/reasoning/chain.py ``parse_chain``).  Anything else is *malformed*: the study gets the
template chain instead, marked ``backend: template_fallback, malformed: true`` so the
summary counts it.  The reflection variant always comes from the template rule, whose
corrupted-span offsets are exact.  The model is loaded once per task process, offline.
"""
from __future__ import annotations

import json
from typing import Optional

from shards.passes.reasoning.annotate import SIDECAR, in_split
from shards.passes.reasoning.annotate import planned_chain
from shards.passes.reasoning.chain import parse_chain, perception_lines

def lm_chain(report: str, context: dict) -> Optional[str]:
    """The LM's chain for one report, or None when its output is malformed."""
    from shards.passes.local_lm import LocalLM

    lm = LocalLM.get(context["lm_path"], "data.passes.reasoning.lm_path")
    organs = ", ".join(o for o, _, _ in perception_lines(report)) or "none"
    text = lm.complete(context["prompt"].format(report=report.strip(), organs=organs), context["max_new_tokens"]).strip()
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
