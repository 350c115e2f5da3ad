"""Vision-to-language projector: a linear map or an MLP (Linear, GELU, Linear, ...)."""
from __future__ import annotations

from torch import nn

from modeling.config import ProjectorConfig


def build_projector(cfg: ProjectorConfig, in_dim: int, out_dim: int) -> nn.Sequential:
    """``linear``: one Linear; ``mlp``: ``depth`` Linears with GELU between (LLaVA's mlp2x_gelu at depth 2)."""
    if cfg.type == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    if cfg.depth < 1:
        raise ValueError(f"projector depth must be >= 1, got {cfg.depth}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(cfg.depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)
