"""The disease-aware vision-token bank (``kg_bank`` asset), as in R2GenKG: Grad-CAM of a light classifier.

A small CNN is trained for a few epochs on the TRAINING split's first views to predict the 14
CheXpert labels of their reports (the labeler's positives).  For every label, each training image
where it is positive contributes its last-conv feature map weighted by the label's Grad-CAM
(ReLU of the gradient-weighted channel sum); the bank token is the mean over those images of the
CAM-weighted average patch feature.  Files: ``bank.safetensors`` (``tokens`` (14, C) float32,
``counts`` (14,) int32) and ``labels.json``.  Seeded and single-threaded, so rebuilds are identical.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save
from torch import nn

from configs.labelsets import CHEXPERT_LABELS
from shards.passes.kg.constants import BANK_ASSET

VERSION = "1"


class BankClassifier(nn.Module):
    """Three strided conv blocks -> global pool -> 14 logits; ``features`` keeps the last map."""

    def __init__(self, channels: int, num_labels: int = len(CHEXPERT_LABELS)):
        super().__init__()
        c = channels
        self.body = nn.Sequential(nn.Conv2d(1, c // 2, 3, 2, 1), nn.ReLU(), nn.Conv2d(c // 2, c, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, 2, 1), nn.ReLU())
        self.head = nn.Linear(c, num_labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.body(x)
        return self.head(fmap.mean((2, 3))), fmap


def _targets(reports: list[str]) -> np.ndarray:
    from shards.passes.kg.extract import _engine

    label_report = _engine().label_report
    return np.array([[1.0 if label_report(r)[n] == 1.0 else 0.0 for n in CHEXPERT_LABELS] for r in reports],
                    dtype=np.float32)


def train_classifier(images: np.ndarray, targets: np.ndarray, channels: int, epochs: int) -> BankClassifier:
    torch.manual_seed(0)
    model = BankClassifier(channels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
    y = torch.from_numpy(targets)
    order = np.random.default_rng(0)
    for _ in range(epochs):
        perm = torch.from_numpy(order.permutation(len(x)))
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[idx])[0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def gradcam_tokens(model: BankClassifier, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label: mean over positive images of the Grad-CAM-weighted average feature vector."""
    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
    num = targets.shape[1]
    c = model.head.in_features
    sums, counts = torch.zeros(num, c), torch.zeros(num, dtype=torch.int32)
    for i in range(0, len(x), 32):
        logits, fmap = model(x[i:i + 32])
        for label in range(num):
            pos = torch.from_numpy(targets[i:i + 32, label] > 0)
            if not bool(pos.any()):
                continue
            grads = torch.autograd.grad(logits[:, label].sum(), fmap, retain_graph=True)[0]
            cam = torch.relu((grads.mean((2, 3), keepdim=True) * fmap).sum(1, keepdim=True))  # (B,1,h,w)
            w = cam / cam.sum((2, 3), keepdim=True).clamp(min=1e-8)
            tok = (fmap * w).sum((2, 3)).detach()  # (B, C)
            sums[label] += tok[pos].sum(0)
            counts[label] += int(pos.sum())
    tokens = sums / counts.clamp(min=1).unsqueeze(1).float()
    return tokens.numpy().astype(np.float32), counts.numpy()


def build_bank(shards_root, rows: dict[str, Any], cfg, split: str, log=print) -> None:
    from shards.sidecars import write_asset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical floating-point order on every rebuild
    try:
        images = np.stack(rows["images"]).astype(np.uint8)
        targets = _targets(rows["reports"])
        model = train_classifier(images, targets, cfg.bank_channels, cfg.bank_epochs)
        tokens, counts = gradcam_tokens(model, images, targets)
    finally:
        torch.set_num_threads(threads)
    write_asset(shards_root, BANK_ASSET, {"bank.safetensors": save({"tokens": tokens, "counts": counts}),
                                          "labels.json": json.dumps(list(CHEXPERT_LABELS)).encode()},
                producer={"name": "rrg kg build", "part": "vision-token bank", "epochs": cfg.bank_epochs},
                version=VERSION, reads_splits=[split], meta={"dim": int(tokens.shape[1])})
    log(f"kg bank: {tokens.shape[0]} label tokens of dim {tokens.shape[1]}, positives per label {counts.tolist()}")
