"""Typed config of the knowledge-graph jobs (``data.passes.kg``): ``rrg kg build`` and ``rrg kg attach``.

Light on purpose (no torch): every config load builds the ``data.passes`` section from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from configs.schema import ConfigError


@dataclass
class KGConfig:
    """How the KG is extracted from training reports and how per-study subgraphs are attached."""

    extractor: Literal["rule", "hf_token", "hf_causal"] = "rule"
    extractor_dir: Optional[str] = None  # local HF directory for the hf_* backends (never downloaded)
    prompt: str = "Entities in: {sentence}\nEntities:"  # hf_causal prompt template
    features: Literal["hashed", "encoder"] = "hashed"  # node features: hashed n-grams or a local text encoder
    encoder_dir: Optional[str] = None
    feature_dim: int = 64  # hashed feature size (an encoder gives its hidden size)
    scales: list[int] = field(default_factory=lambda: [100, 300, 500])  # nodes per subgraph scale
    max_edges_per_node: int = 4  # edges kept per scale <= this x nodes (by triple count)
    neighbours: int = 5  # k most similar training studies (by image embedding), never the study itself
    embed_size: int = 16  # image embedding: the first view pooled to embed_size x embed_size
    max_entity_free_fraction: float = 0.5  # of training reports; above it the build fails naming them
    bank: bool = True  # also train the 14-label classifier and write the Grad-CAM vision-token bank
    bank_epochs: int = 8
    bank_image_size: int = 64
    bank_channels: int = 32

    def validate(self, key: str) -> None:
        if self.extractor != "rule" and not self.extractor_dir:
            raise ConfigError(f"{key}.extractor_dir", f"extractor '{self.extractor}' needs a local model directory")
        if self.features == "encoder" and not self.encoder_dir:
            raise ConfigError(f"{key}.encoder_dir", "features: encoder needs a local text-encoder directory")
        if not self.scales or any(s < 1 for s in self.scales) or sorted(self.scales) != self.scales:
            raise ConfigError(f"{key}.scales", "must be a non-empty increasing list of node counts >= 1")
        if self.neighbours < 1:
            raise ConfigError(f"{key}.neighbours", "must be >= 1")
        if self.feature_dim < 4 or self.embed_size < 2 or self.max_edges_per_node < 1:
            raise ConfigError(key, "feature_dim >= 4, embed_size >= 2, max_edges_per_node >= 1")
        if not 0.0 <= self.max_entity_free_fraction <= 1.0:
            raise ConfigError(f"{key}.max_entity_free_fraction", "must be within [0, 1]")
