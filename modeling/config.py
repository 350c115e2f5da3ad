"""Typed config section for the model: family, vision encoder, projector, LM, attention."""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from configs.schema import ConfigError

# ``rrg plan`` reads real-scale configs whose model directories are placeholders on this machine
CHECK_PATHS = contextvars.ContextVar("rrg_check_model_paths", default=True)


@contextlib.contextmanager
def without_path_checks():
    token = CHECK_PATHS.set(False)
    try:
        yield
    finally:
        CHECK_PATHS.reset(token)


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class VisionConfig:
    path: Optional[str] = None  # local Hugging Face model dir (real runs)
    hf_config: dict[str, Any] = field(default_factory=dict)  # used when path is None (tests, demo)
    image_size: int = 224  # model input size; shards hold larger pre-resized images
    select_layer: int = -1  # hidden layer whose patch tokens feed the projector
    channels: int = 3  # grayscale radiographs are repeated to this many channels


@dataclass
class LMConfig:
    path: Optional[str] = None  # local Hugging Face causal LM dir (real runs)
    hf_config: dict[str, Any] = field(default_factory=dict)  # used when path is None
    tokenizer: Optional[str] = None  # local tokenizer dir; None = path, or train one on the train reports
    tokenizer_vocab_size: int = 1024  # when rrg trains the tokenizer itself
    chat_template: str = "plain"  # registry name, see modeling/templates.py


@dataclass
class ProjectorConfig:
    type: Literal["mlp", "linear"] = "mlp"
    depth: int = 2


@dataclass
class ModelConfig:
    family: str = "llava_rad"
    vision: VisionConfig = field(default_factory=VisionConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    attn_implementation: Literal["auto", "flash", "sdpa", "eager"] = "auto"
    max_text_len: int = 160  # prompt + report tokens (image tokens come on top)
    prompt: str = "Write the findings and impression of this chest X-ray."
    options: dict[str, Any] = field(default_factory=dict)  # the family's typed options (its Options dataclass)
    init_from: Optional[str] = None  # an rrg export directory whose weights start this run

    def validate(self, key: str = "model") -> None:
        for part in ("vision", "lm"):
            sub = getattr(self, part)
            if sub.path is None and not sub.hf_config:
                raise ConfigError(f"{key}.{part}.path", "missing: give a local model path or an hf_config")
            if sub.path is not None and CHECK_PATHS.get() and not os.path.isdir(sub.path):
                raise ConfigError(f"{key}.{part}.path", f"no such model directory: {sub.path}")
        if self.lm.tokenizer is not None and CHECK_PATHS.get() and not os.path.exists(self.lm.tokenizer):
            raise ConfigError(f"{key}.lm.tokenizer", f"no such tokenizer: {self.lm.tokenizer}")
        if self.lm.tokenizer is None and self.lm.path is None and self.lm.tokenizer_vocab_size < 300:
            raise ConfigError(f"{key}.lm.tokenizer_vocab_size",
                              "must be >= 300 (byte-level BPE: 256 bytes + specials + merges)")
        if self.vision.image_size < 16:
            raise ConfigError(f"{key}.vision.image_size", "must be >= 16")
        if self.max_text_len < 8:
            raise ConfigError(f"{key}.max_text_len", "must be >= 8")
        if self.init_from is not None and CHECK_PATHS.get() and not os.path.isfile(os.path.join(self.init_from, "rrg_model.json")):
            raise ConfigError(f"{key}.init_from", f"not an rrg export directory: {self.init_from}")

    def validate_family(self) -> None:
        """Unknown family, unknown option or a bad option type (imports the family modules: run it last)."""
        from modeling.family import family_class, parse_options

        parse_options(family_class(self.family), self)
