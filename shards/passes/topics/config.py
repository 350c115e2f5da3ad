"""Typed config of ``rrg annotate topics`` (``data.passes.topics``): the LLaVA-TA topic overlay."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from configs.schema import ConfigError


DEFAULT_TOPIC_PROMPT = (
    "Rewrite the chest X-ray report as one short sentence per topic, one line each, as "
    "'topic: sentence'. Drop comparisons with prior studies and speculation. Write a negative as "
    "'<finding> is absent.'. Topics: {topics}.\nReport: {report}\nAnswer:\n")


@dataclass
class TopicsConfig:
    """``rrg annotate topics``: the LLaVA-TA topic overlay (shards/passes/topics/annotate.py)."""

    backend: Literal["rule", "hf"] = "rule"
    model_path: str = ""  # backend hf: a local Hugging Face causal-LM directory (never downloaded)
    prompt: str = DEFAULT_TOPIC_PROMPT  # backend hf: {report} and {topics} are filled in
    max_new_tokens: int = 192
    max_fallback_fraction: float = 1.0  # backend hf: stop when more studies than this fall back to rules
    splits: list[str] = field(default_factory=lambda: ["train"])  # only what trains reads reference topics

    def validate(self, key: str) -> None:
        if self.backend == "hf" and not self.model_path:
            raise ConfigError(f"{key}.model_path", "backend 'hf' needs a local model directory")
        if "{report}" not in self.prompt:
            raise ConfigError(f"{key}.prompt", "must contain {report}")
        if not 0.0 <= self.max_fallback_fraction <= 1.0:
            raise ConfigError(f"{key}.max_fallback_fraction", "must be within [0, 1]")
        if not self.splits:
            raise ConfigError(f"{key}.splits", "must name at least one split")
