"""Chest X-ray segmentation backends for ``rrg shards masks`` (registry :data:`SEGMENTERS`).

A segmenter maps one uint8 view (H, W) to soft masks float (C, H, W) in [0, 1]
with named channels.  Backends, all local files (nothing is downloaded):

``hf_dir``
    a Hugging Face-style directory: ``config.json`` (``architecture:
    "rrg_unet"``, in/out channels, width, depth, ``channels`` names,
    ``input_size``) + ``model.safetensors``.  :class:`UNet` is a small
    U-Net; ``save_pretrained`` / ``from_pretrained`` write and read exactly
    that layout (safetensors only, never pickles).
``torchscript``
    a TorchScript file (``torch.jit.save``) taking (1, 1, S, S) float in
    [0, 1] and returning (1, C, S, S) logits; channel names come from
    ``data.passes.masks.channels``.

torchxrayvision's PSPNet (14 structures) is not a backend here: the
``torchxrayvision`` package pulls torchvision, which this project does not
install; export it to TorchScript on another machine and use ``torchscript``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from configs.schema import Registry

SEGMENTERS: Registry = Registry("segmenter backend")
CONFIG_NAME, WEIGHTS_NAME, ARCHITECTURE = "config.json", "model.safetensors", "rrg_unet"


class UNet(nn.Module):
    """A plain U-Net: ``depth`` down/up levels of two 3x3 convs, skip connections, 1x1 head."""

    def __init__(self, in_channels: int = 1, out_channels: int = 7, width: int = 16, depth: int = 3):
        super().__init__()
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "width": width, "depth": depth}

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([block(in_channels, widths[0])] +
                                  [block(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.merge = nn.ModuleList([block(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.down):
            x = down(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)

    def save_pretrained(self, path: str, channels: list[str], input_size: int = 256) -> None:
        from safetensors.torch import save_file

        if len(channels) != self.config["out_channels"]:
            raise ValueError(f"{len(channels)} channel names for {self.config['out_channels']} outputs")
        os.makedirs(path, exist_ok=True)
        cfg = {"architecture": ARCHITECTURE, **self.config, "channels": list(channels), "input_size": input_size}
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump(cfg, f, indent=1)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, os.path.join(path, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, path: str) -> tuple["UNet", dict[str, Any]]:
        from safetensors.torch import load_file

        cfg_path, weights = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
        for p in (cfg_path, weights):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"segmenter directory {path}: missing {os.path.basename(p)}")
        with open(cfg_path) as f:
            cfg = json.load(f)
        if cfg.get("architecture") != ARCHITECTURE:
            raise ValueError(f"{cfg_path}: architecture {cfg.get('architecture')!r}, expected {ARCHITECTURE!r}")
        model = cls(cfg["in_channels"], cfg["out_channels"], cfg["width"], cfg["depth"])
        model.load_state_dict(load_file(weights))
        return model.eval(), cfg


class Segmenter:
    """A loaded model + its channel names and input size: ``__call__(view) -> float (C, H, W)``."""

    def __init__(self, model: Any, channels: list[str], input_size: int):
        self.model, self.channels, self.input_size = model, list(channels), int(input_size)

    @torch.no_grad()
    def __call__(self, view: np.ndarray) -> np.ndarray:
        gray = view if view.ndim == 2 else view.mean(axis=-1)
        h, w = gray.shape
        x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32) / 255.0)[None, None]
        x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        logits = self.model(x)
        if logits.ndim != 4 or logits.shape[1] != len(self.channels):
            raise ValueError(f"segmenter output {tuple(logits.shape)} does not match channels {self.channels}")
        probs = torch.sigmoid(nn.functional.interpolate(logits.float(), size=(h, w), mode="bilinear",
                                                        align_corners=False))
        return probs[0].numpy()


@SEGMENTERS.register("hf_dir")
def load_hf_dir(path: str, channels: list[str], input_size: int) -> Segmenter:
    model, cfg = UNet.from_pretrained(path)
    names = list(channels) or cfg["channels"]
    if names != cfg["channels"]:
        raise ValueError(f"data.passes.masks.channels {names} differ from the model's {cfg['channels']} ({path})")
    return Segmenter(model, names, input_size or cfg.get("input_size", 256))


@SEGMENTERS.register("torchscript")
def load_torchscript(path: str, channels: list[str], input_size: int) -> Segmenter:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TorchScript segmenter {path} not found")
    if not channels:
        raise ValueError("a TorchScript segmenter needs data.passes.masks.channels (its output channel names)")
    return Segmenter(torch.jit.load(path, map_location="cpu").eval(), channels, input_size or 256)


def load_segmenter(backend: str, path: str, channels: list[str], input_size: int) -> Segmenter:
    return SEGMENTERS.get(backend, "data.passes.masks.backend")(path, channels, input_size)
