"""The checks of a model config that read the checkpoints on disk or import the families.

They live apart from modeling/config.py (plain dataclasses, imported by every process) because they
import the checkpoint readers and the family modules; ``RunConfig.validate`` runs them last, before
Ray or any worker starts, and only where paths are checked (``CHECK_PATHS``).
"""
from __future__ import annotations

import os
from typing import Optional

from configs.schema import ConfigError
from modeling.config import CHECK_PATHS, ModelConfig


def check_checkpoints(model: ModelConfig, key: str = "model") -> None:
    """The formats of ``vision.path`` and ``lm.path`` are ones rrg reads, and what the run needs from them
    (input size, normalisation) is known: one line naming the path otherwise, before any worker starts."""
    if not CHECK_PATHS.get() or (model.vision.path is None and model.lm.path is None):
        return  # inline configs only (importing the readers costs every process ~2 s of transformers)
    from modeling.formats import ModelFormatError, lm_config

    try:
        if model.vision.path is not None:
            from modeling.vision import image_stats, input_size, vision_source

            vision_source(model.vision.path)
            input_size(model.vision)
            image_stats(model.vision)
        if model.lm.path is not None:
            lm_config(model.lm.path)
            tok = model.lm.tokenizer or model.lm.path
            names = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
            if os.path.isdir(tok) and not any(os.path.isfile(os.path.join(tok, n)) for n in names):
                raise ModelFormatError(f"model.lm.path {tok}: no tokenizer there ({', '.join(names)}): set "
                                       f"model.lm.tokenizer to the directory that has it")
    except ModelFormatError as err:
        part = "vision" if "vision" in str(err).split(":", 1)[0] else "lm"
        raise ConfigError(f"{key}.{part}.path", str(err).split(": ", 1)[-1]) from None


def check_family(model: ModelConfig, packing: bool = False, eval_options: Optional[dict] = None) -> None:
    """Unknown family, unknown option or a bad option type (``model.options`` and ``eval.family_options``);
    ``packing``: the family takes packed batches."""
    from modeling.family import family_class, parse_eval_options, parse_options

    cls = family_class(model.family)
    parse_options(cls, model)
    parse_eval_options(cls, eval_options or {})
    if packing and not cls.supports_packing:
        raise ConfigError("train.packing.enabled", f"family '{model.family}' takes no packed batches "
                          f"(see modeling/packing.py): set it to false")
