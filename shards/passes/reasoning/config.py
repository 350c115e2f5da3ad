"""Typed config of ``rrg annotate reasoning`` (``data.passes.reasoning``): how LVMed-R2's chains are made."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from configs.schema import ConfigError
from shards.passes.reasoning.chain import FORMATS

DEFAULT_PROMPT = ("Rewrite the chest X-ray report as a reasoning chain with the sections Knowledge:, "
                  "Perception:, Fine-grained report: and Final report:.\nReport: {report}\nChain:\n")


@dataclass
class ReasoningConfig:
    """``data.reasoning``: how reasoning chains are made (``rrg annotate reasoning``)."""

    backend: Literal["template", "hf_lm"] = "template"
    seed: int = 0  # the reflection corruption rule: rng(seed, crc32(study key))
    max_examples: int = 5  # example sentences per (organ, condition) in the tree
    lm_path: Optional[str] = None  # local HF causal-LM directory (backend hf_lm)
    prompt: str = DEFAULT_PROMPT  # {report} and {organs} are filled in
    max_new_tokens: int = 256
    # share of the training studies whose reflection variant corrects a corrupted line; the others' reflection
    # row is their plain chain (the model must learn when not to reflect).  The corrections are planned so that
    # normal->abnormal and abnormal->normal are equally frequent (chain.plan_reflections).
    reflect_share: float = 0.5
    format: str = "paper"  # chain text: paper (the paper's four modules in full) or compact (conditions only)

    def validate(self, key: str = "data.reasoning") -> None:
        if not 0.0 <= self.reflect_share <= 1.0:
            raise ConfigError(f"{key}.reflect_share", "must be in [0, 1]")
        if self.format not in FORMATS:
            raise ConfigError(f"{key}.format", f"one of {list(FORMATS)}")
        if self.max_examples < 1:
            raise ConfigError(f"{key}.max_examples", "must be >= 1")
        if self.backend == "hf_lm" and not self.lm_path:
            raise ConfigError(f"{key}.lm_path", "backend hf_lm needs a local causal-LM directory")
        if "{report}" not in self.prompt:
            raise ConfigError(f"{key}.prompt", "must contain {report}")
