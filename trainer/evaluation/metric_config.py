"""Config sections of the model-based metrics (``eval.radgraph``, ``eval.bertscore`` ...).

Each names a local directory; an empty one means the metric is not computed, and metrics.json says
``"<key>_status": "not computed: eval.<section>.<field> is unset"`` instead of a number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from configs.schema import ConfigError


@dataclass
class RadGraphConfig:
    model_dir: str = ""  # the radgraph package's checkpoint dir: config.json, weights.th, vocabulary/
    encoder_dir: str = ""  # the encoder's tokenizer + config.json (default: the name in config.json, from the HF cache)
    case: Literal["pypi-0.1.18", "lower"] = "pypi-0.1.18"  # see trainer/evaluation/radgraph.py (the version trap)


@dataclass
class BertScoreConfig:
    model_dir: str = ""  # save_pretrained directory of model_type
    model_type: str = "distilroberta-base"
    num_layers: Optional[int] = None  # default: bert_score's layer for model_type (distilroberta-base 5, roberta-large 17)
    rescale_with_baseline: bool = True
    idf: bool = False
    batch_size: int = 64


@dataclass
class LlavaRadBertScoreConfig(BertScoreConfig):
    """``eval.bertscore_llava_rad``: its own class so a partial YAML section keeps these defaults."""

    model_type: str = "roberta-large"
    rescale_with_baseline: bool = False


def llava_rad_bertscore() -> LlavaRadBertScoreConfig:
    return LlavaRadBertScoreConfig()


@dataclass
class SembConfig:
    checkpoint: str = ""  # the CheXbert checkpoint (chexbert.pth); default: eval.labeler_args when labeler is chexbert
    tokenizer: str = ""  # bert-base-uncased tokenizer directory


@dataclass
class GreenConfig:
    model_dir: str = ""  # save_pretrained directory of GREEN-RadLlama2-7b
    batch_size: int = 8
    max_length: int = 2048


@dataclass
class NarrativeBiasConfig:
    max_k: int = 3  # rows K = 1..max_k final sentences completed from the true prefix
    studies: int = 0  # probe only the split's first N studies (in reader order, split over workers); 0 = all

    def validate(self, key: str) -> None:
        if self.max_k < 1:
            raise ConfigError(f"{key}.max_k", "must be >= 1")
        if self.studies < 0:
            raise ConfigError(f"{key}.studies", "must be >= 0")
