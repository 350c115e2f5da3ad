"""Model families: one registry entry + one module per family.

A family knows how to make its tokenizer, its model, the per-sample tensors
and the batch collation for one kind of VLM.  The trainer and evaluator only
talk to this interface, so adding a family (Radixpert, LLaVA-TA, ...) never
touches them.
"""
from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable, Optional

from torch import nn
from transformers import PreTrainedTokenizerBase

from configs.schema import Registry, from_dict
from modeling.config import ModelConfig

FAMILIES: Registry[type["ModelFamily"]] = Registry("model family")
MODEL_JSON = "rrg_model.json"


class ModelFamily(ABC):
    """How to build one family's tokenizer, model, samples and batches from a ModelConfig."""

    name: str = ""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    @abstractmethod
    def tokenizer(self, train_reports: Optional[Iterable[str]] = None,
                  save_dir: Optional[str] = None) -> PreTrainedTokenizerBase:
        """Load the configured tokenizer, or train one on ``train_reports``; save it to ``save_dir``."""

    @abstractmethod
    def build_model(self, tok: PreTrainedTokenizerBase) -> nn.Module:
        """The model, random-initialised from hf_configs or loaded from local paths."""

    @abstractmethod
    def sample_builder(self, tok: PreTrainedTokenizerBase, train: bool) -> Callable[[Any], dict]:
        """DecodedSample -> dict of tensors (plus a few plain keys such as ``key``)."""

    @abstractmethod
    def collate(self, tok: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict]:
        """list of sample dicts -> one batch dict."""

    @classmethod
    @abstractmethod
    def load_pretrained(cls, directory: str) -> nn.Module:
        """Rebuild a model saved by its ``save_pretrained``."""


def _import_families() -> None:
    """Import the modules that register families (kept here so callers need one import)."""
    import modeling.llava_rad  # noqa: F401


def build_family(model_cfg: ModelConfig) -> ModelFamily:
    _import_families()
    return FAMILIES.get(model_cfg.family, "model.family")(model_cfg)


def read_model_json(directory: str) -> tuple[str, ModelConfig, dict]:
    """(family name, ModelConfig, the whole json) of an exported model directory."""
    with open(os.path.join(directory, MODEL_JSON)) as fh:
        meta = json.load(fh)
    return meta["family"], from_dict(ModelConfig, meta["model_config"], "model"), meta


def load_pretrained(directory: str) -> nn.Module:
    """Load any rrg export directory, dispatching on the family recorded in ``rrg_model.json``."""
    _import_families()
    family, _, _ = read_model_json(directory)
    return FAMILIES.get(family, "model.family").load_pretrained(directory)
