"""Typed config section for the model: family, vision encoder, projector, LM, attention."""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

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
class PackingConfig:
    """``train.packing`` (modeling/packing.py packs): pack the studies of a micro-batch into rows of at most ``max_len`` LM positions."""

    enabled: bool = False
    max_len: int = 2048  # LM positions per packed row: prompt + report tokens + image tokens

    def validate(self, key: str = "train.packing") -> None:
        if self.max_len < 16:
            raise ConfigError(f"{key}.max_len", f"must be >= 16, got {self.max_len}")


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class VisionConfig:
    # a local checkpoint in any format modeling/vision_formats.py reads (Hugging Face, open_clip, BioViL, the
    # tower of a multimodal checkpoint); real runs
    path: Optional[str] = None
    hf_config: dict[str, Any] = field(default_factory=dict)  # used when path is None (tests, demo)
    image_size: Optional[int] = None  # model input size; None: the checkpoint's native size (hf_config's, else 224)
    # hidden state whose patch tokens feed the projector: an index (-1 the last layer, LLaVA's -2), or "last":
    # the tower's final normalised output (last_hidden_state)
    feature_layer: Union[int, Literal["last"]] = -1
    channels: int = 3  # grayscale radiographs are repeated to this many channels
    mean: Optional[list[float]] = None  # normalisation; None: the checkpoint's own (an error if it states none)
    std: Optional[list[float]] = None


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
    # the attention kernel per batch layout (modeling/attention.py plan_attention): auto picks flash-attn, PyTorch's
    # varlen kernel, FlexAttention or SDPA by device; the resolved plan is logged and stamped into metrics.json
    attention: Literal["auto", "flash", "flex", "sdpa", "eager"] = "auto"
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
        if self.vision.image_size is not None and self.vision.image_size < 16:
            raise ConfigError(f"{key}.vision.image_size", "must be >= 16")
        if (self.vision.mean is None) != (self.vision.std is None):
            raise ConfigError(f"{key}.vision.mean", "give both vision.mean and vision.std, or neither")
        for name in ("mean", "std"):
            values = getattr(self.vision, name)
            if values is not None and len(values) not in (1, self.vision.channels):
                raise ConfigError(f"{key}.vision.{name}", f"needs 1 or {self.vision.channels} values, got {values}")
        if self.vision.std is not None and any(v <= 0 for v in self.vision.std):
            raise ConfigError(f"{key}.vision.std", f"must be > 0, got {self.vision.std}")
        if self.max_text_len < 8:
            raise ConfigError(f"{key}.max_text_len", "must be >= 8")
        if self.init_from is not None and CHECK_PATHS.get() and not os.path.isfile(os.path.join(self.init_from, "rrg_model.json")):
            raise ConfigError(f"{key}.init_from", f"not an rrg export directory: {self.init_from}")
