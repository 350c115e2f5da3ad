"""Vision encoder: a Hugging Face vision tower whose patch tokens feed the projector.

Built from a local model directory (a dual CLIP/SigLIP checkpoint gives its
vision tower) or, for tests and the demo, randomly initialised from an
``hf_config`` dict.  Also the image preprocessing the encoder expects:
resize to ``image_size``, grayscale repeated to ``channels``, normalised.
"""
from __future__ import annotations

import json
import os
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from modeling.config import VisionConfig


def load_vision_model(cfg: VisionConfig, attn_implementation: str) -> PreTrainedModel:
    """The HF vision model: the tower of a dual model at ``cfg.path``, the model there, or a fresh one."""
    if cfg.path is None:
        hf_cfg = AutoConfig.for_model(**cfg.hf_config)
        return AutoModel.from_config(hf_cfg, attn_implementation=attn_implementation)
    hf_cfg = AutoConfig.from_pretrained(cfg.path, local_files_only=True)
    vision_cfg = getattr(hf_cfg, "vision_config", None)
    if vision_cfg is None:
        return AutoModel.from_pretrained(cfg.path, local_files_only=True, attn_implementation=attn_implementation)
    # dual (CLIP/SigLIP) checkpoint: the *VisionModel class keeps the tower under the same
    # "vision_model." prefix, so loading it from the dual checkpoint takes just the tower's weights
    cls = AutoModel._model_mapping[type(vision_cfg)]
    return cls.from_pretrained(cfg.path, config=vision_cfg, local_files_only=True,
                               attn_implementation=attn_implementation)


class VisionEncoder(nn.Module):
    """Wraps the HF vision model; ``forward(pixel_values) -> (B, num_patches, hidden)`` patch tokens."""

    def __init__(self, model: PreTrainedModel, select_layer: int = -1):
        super().__init__()
        self.model = model
        self.select_layer = select_layer
        cfg = model.config
        if hasattr(cfg, "patch_size"):  # a ViT: patch tokens
            self.hidden_size = int(cfg.hidden_size)
            self.num_patches = (int(cfg.image_size) // int(cfg.patch_size)) ** 2
        else:  # a CNN (e.g. BioViL's ResNet-50): its last feature map, flattened row-major into tokens
            self.hidden_size = int(cfg.hidden_sizes[-1])
            self.num_patches = None

    # pooling parts of CLIP/SigLIP towers: the patch features never pass through them
    UNUSED_PARTS = frozenset({"post_layernorm", "head"})

    def feature_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the patch features depend on (what ``train_vision`` unfreezes).

        The pooling head and post-layernorm get no gradient; leaving them frozen keeps every
        trainable parameter used, which ZeRO and DDP-style reducers expect.
        """
        for name, p in self.model.named_parameters():
            if not self.UNUSED_PARTS.intersection(name.split(".")):
                yield p

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(dtype=next(self.model.parameters()).dtype)
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]
        if feats.ndim == 4:  # CNN feature map (B, C, h, w) -> (B, h*w, C)
            return feats.flatten(2).transpose(1, 2)
        if feats.shape[1] == self.num_patches + 1:  # CLIP-style class token first: keep patches only
            feats = feats[:, 1:]
        return feats


def image_stats(cfg: VisionConfig) -> tuple[list[float], list[float]]:
    """Normalisation mean/std: from the model dir's preprocessor_config.json, else SigLIP's 0.5/0.5."""
    if cfg.path is not None:
        pre = os.path.join(cfg.path, "preprocessor_config.json")
        if os.path.isfile(pre):
            with open(pre) as fh:
                data = json.load(fh)
            if "image_mean" in data and "image_std" in data:
                return list(data["image_mean"]), list(data["image_std"])
    return [0.5] * cfg.channels, [0.5] * cfg.channels


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
