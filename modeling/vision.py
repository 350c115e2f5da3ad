"""Vision encoder: a Hugging Face vision tower whose patch tokens feed the projector.

Built from a local checkpoint in any format :mod:`modeling.vision_formats` reads (Hugging Face
CLIP / SigLIP / Dinov2 / ViT / Swin / ResNet, the tower of a multimodal checkpoint, open_clip, BioViL)
or, for tests and the demo, randomly initialised from an ``hf_config`` dict.

Token geometry (how many tokens, on which grid, how many class/register tokens come first, the
feature width) comes from one dry forward of the model's own architecture on PyTorch's ``meta``
device, never from config arithmetic: a Swin at 224 px gives 49 tokens, not 56 x 56; RAD-DINO at any
size gives its CLS token first.  The same dry run, run backward, tells which parameters the features
depend on (what ``train_vision`` may unfreeze: a pooling head or the layers after ``feature_layer``
get no gradient, and ZeRO wants every trainable parameter used).

``vision.feature_layer``: an index into the tower's hidden states (``-1`` the last layer's output,
``-2`` LLaVA's second-to-last), or ``last``: the tower's final normalised output (``last_hidden_state``:
what R2GenGPT takes from Swin and RAD-DINO's model card from Dinov2).  Class and register tokens are
dropped (LLaVA's ``patch`` features); a CNN's feature map is flattened row-major into tokens.

Preprocessing: resize to the input size (``vision.image_size``, else the checkpoint's native size),
grayscale repeated to ``channels``, normalised with ``vision.mean/std`` when the run config gives them,
else with the checkpoint's own (``preprocessor_config.json``, open_clip's ``preprocess_cfg``); a
checkpoint that states none (BioViL, an open_clip model config without ``preprocess_cfg``) needs them
in the run config.  Randomly initialised towers (no path) use 0.5 / 0.5.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from modeling.config import VisionConfig
from modeling.formats import ModelFormatError, current_load_dtype, weights_wanted
from modeling.vision_formats import VisionSource, accepts_interpolation, detect, prefix_tokens

DEFAULT_INLINE_SIZE = 224


@functools.lru_cache(maxsize=16)
def vision_source(path: str) -> VisionSource:
    """The detected format of a vision checkpoint directory (read once per process)."""
    return detect(path)


def input_size(cfg: VisionConfig) -> int:
    """The encoder's input size: ``vision.image_size``, else the checkpoint's native size."""
    if cfg.image_size is not None:
        return int(cfg.image_size)
    if cfg.path is None:
        return int(cfg.hf_config.get("image_size", DEFAULT_INLINE_SIZE))
    native = vision_source(cfg.path).native_size
    if native is None:
        raise ModelFormatError(f"model.vision.path {cfg.path}: the checkpoint ({vision_source(cfg.path).describe}) "
                               f"does not state its input size: set model.vision.image_size")
    return int(native)


def image_stats(cfg: VisionConfig) -> tuple[list[float], list[float]]:
    """Normalisation mean/std: the run config's, else the checkpoint's own; 0.5/0.5 for random towers."""
    def per_channel(values) -> list[float]:
        values = [float(v) for v in values]
        return values * cfg.channels if len(values) == 1 else values[: cfg.channels]

    if cfg.mean is not None and cfg.std is not None:
        return per_channel(cfg.mean), per_channel(cfg.std)
    if cfg.path is None:
        return [0.5] * cfg.channels, [0.5] * cfg.channels
    src = vision_source(cfg.path)
    if src.mean is None or src.std is None:
        raise ModelFormatError(f"model.vision.path {cfg.path}: the checkpoint ({src.describe}) states no image "
                               f"normalisation: set model.vision.mean and model.vision.std to what it was trained with")
    return per_channel(src.mean), per_channel(src.std)


def resolved(cfg: VisionConfig) -> VisionConfig:
    """``cfg`` with the input size and normalisation it resolves to (what an export records)."""
    import dataclasses

    mean, std = image_stats(cfg)
    return dataclasses.replace(cfg, image_size=input_size(cfg), mean=mean, std=std)


def save_vision(encoder: "VisionEncoder", cfg: VisionConfig, directory: str) -> None:
    """The tower as a plain Hugging Face directory + the preprocessing it runs with (``preprocessor_config.json``)."""
    import json
    import os

    encoder.model.save_pretrained(directory)
    mean, std = image_stats(cfg)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as fh:
        json.dump({"image_mean": mean, "image_std": std, "size": input_size(cfg)}, fh)


def load_vision_model(cfg: VisionConfig, attn_implementation: str, *, weights: bool = True) -> PreTrainedModel:
    """The HF vision model: from the checkpoint at ``cfg.path`` (any format rrg reads), or a fresh one.

    Loaded in the dtype of :func:`modeling.formats.loading_dtype` (the run's precision).
    ``weights=False``: the checkpoint's architecture only (``rrg plan``, on the meta device).
    """
    dtype = current_load_dtype()
    if cfg.path is None:
        hf_cfg = AutoConfig.for_model(**cfg.hf_config)
        return AutoModel.from_config(hf_cfg, attn_implementation=attn_implementation, dtype=dtype)
    return vision_source(cfg.path).build(attn=attn_implementation, dtype=dtype, image_size=input_size(cfg),
                                         weights=weights and weights_wanted())


def build_vision_encoder(cfg: VisionConfig, attn_implementation: str) -> "VisionEncoder":
    return VisionEncoder(load_vision_model(cfg, attn_implementation), cfg.feature_layer, input_size(cfg),
                         cfg.channels)


def _model_size(model: PreTrainedModel) -> Optional[int]:
    size = getattr(model.config, "image_size", None)
    if size is None:
        return None
    return int(size[0] if isinstance(size, (list, tuple)) else size)


class VisionEncoder(nn.Module):
    """Wraps the HF vision model; ``forward(pixel_values) -> (B, num_patches, hidden_size)`` patch tokens.

    ``grid`` (h, w), ``num_patches`` (h * w), ``hidden_size`` and ``prefix_tokens`` come from a dry
    forward of the model's architecture at ``image_size`` (see the module docs).
    """

    def __init__(self, model: PreTrainedModel, feature_layer: int | str = -1, image_size: Optional[int] = None,
                 channels: int = 3):
        super().__init__()
        self.model = model
        self.feature_layer = feature_layer
        self.image_size = int(image_size or _model_size(model) or DEFAULT_INLINE_SIZE)
        self.channels = channels
        native = _model_size(model)
        self.interpolate = accepts_interpolation(model) and native is not None and native != self.image_size
        self.prefix_tokens = prefix_tokens(model)
        self._used: Optional[frozenset[str]] = None
        twin = self._meta_twin()
        out = self._select(twin, torch.zeros(1, channels, self.image_size, self.image_size, device="meta"))
        if out.ndim == 4:  # a CNN's feature map
            self.grid = (int(out.shape[2]), int(out.shape[3]))
            self.hidden_size = int(out.shape[1])
        else:
            n = int(out.shape[1]) - self.prefix_tokens
            side = math.isqrt(max(n, 0))
            if n <= 0 or side * side != n:
                raise ModelFormatError(f"vision tower {type(model).__name__} at {self.image_size} px gives "
                                       f"{int(out.shape[1])} tokens ({self.prefix_tokens} class/register tokens "
                                       f"first): not a square patch grid")
            self.grid = (side, side)
            self.hidden_size = int(out.shape[2])
        self.num_patches = self.grid[0] * self.grid[1]

    # ---- the dry run ------------------------------------------------------------------------
    def _meta_twin(self) -> PreTrainedModel:
        """The same architecture on the meta device (shapes only; never partitioned, never loaded)."""
        with torch.device("meta"):
            return type(self.model)(copy.deepcopy(self.model.config))

    def _select(self, model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        """The configured feature layer's output, before prefix tokens are dropped."""
        kw = {"interpolate_pos_encoding": True} if self.interpolate else {}
        last = self.feature_layer == "last"
        out = model(pixel_values=pixel_values, output_hidden_states=not last, **kw)
        return out.last_hidden_state if last else out.hidden_states[self.feature_layer]

    def used_parameter_names(self) -> frozenset[str]:
        """Names of the tower's parameters that the features depend on (a meta-device backward)."""
        if self._used is None:
            twin = self._meta_twin()
            for p in twin.parameters():
                p.requires_grad_(True)
            x = torch.zeros(1, self.channels, self.image_size, self.image_size, device="meta")
            self._select(twin, x).sum().backward()
            self._used = frozenset(n for n, p in twin.named_parameters() if p.grad is not None)
        return self._used

    def feature_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the patch features depend on (what ``train_vision`` unfreezes).

        A pooling head, a post-layernorm the features never pass and the layers after
        ``feature_layer`` get no gradient; leaving them frozen keeps every trainable parameter
        used, which ZeRO and DDP-style reducers expect.
        """
        used = self.used_parameter_names()
        for name, p in self.model.named_parameters():
            if name in used:
                yield p

    def train(self, mode: bool = True) -> "VisionEncoder":
        """A frozen tower stays in eval mode: BatchNorm statistics (BioViL's ResNet) and dropout do not move."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.model.parameters()):
            self.model.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(dtype=next(self.model.parameters()).dtype)
        feats = self._select(self.model, pixel_values)
        if feats.ndim == 4:  # CNN feature map (B, C, h, w) -> (B, h*w, C)
            return feats.flatten(2).transpose(1, 2)
        return feats[:, self.prefix_tokens:]


def preprocess_image(image: np.ndarray, size: int, channels: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) -> float (channels, size, size), resized and normalised."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # a fresh, writable array
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[0] != channels:
        x = x.mean(0, keepdim=True).expand(channels, -1, -1) if x.shape[0] == 3 else x.expand(channels, -1, -1)
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    m = torch.tensor(mean[:channels]).view(-1, 1, 1)
    s = torch.tensor(std[:channels]).view(-1, 1, 1)
    return ((x - m) / s).contiguous()
