"""The model-family contract: everything the trainer and the evaluator may rely on, and nothing else.

A family is one package plus one registry entry (``@FAMILIES.register("name")`` on a
:class:`ModelFamily` subclass in a module its ``__init__.py`` imports): the shipped ones are the
subpackages of ``modeling.families``; a user's own live in the directories of ``RRG_FAMILY_PATH``
(see :func:`import_families`).  The trainer never branches on a family's name; it calls:

* ``Options`` - the family's typed options (``model.options`` in YAML), checked at config load;
* ``EvalOptions`` - its typed generation switches (``eval.family_options``), checked at config load too;
  ``eval_options(gen)`` reads them from a :class:`GenConfig`;
* ``tokenizer(train_texts, save_dir)`` and ``tokenizer_texts(records)`` - what its tokenizer must cover;
* ``build_model(tok, assets)`` - an ``nn.Module`` whose ``forward(**batch_tensors)`` returns an
  object with ``loss`` and ``weight_sum``; an unknown batch key is an error (no ``**ignored``);
* ``trainable_groups(model, mode, stage)`` - named parameter groups that train in tuning ``mode``
  (it may wrap parts, e.g. LoRA on the LM); everything else is frozen by the caller; each group
  may carry its own learning-rate scale;
* ``sample_builder(tok, mode, target, gen=None)`` - ``DecodedSample -> list of row dicts`` (one study
  may fan out into several rows, e.g. one per topic); in ``eval`` mode ``gen`` is the evaluation's
  :class:`GenConfig` (its ``options`` = ``eval.family_options``), so that the eval config alone picks
  what eval rows carry (e.g. LLaVA-TA's ``selection: oracle``).  In ``eval`` mode it may read only the images,
  tensors derived from the image (masks, KG subgraphs, ``DecodedSample.tensors``) and the
  reference text (kept aside for scoring).  Anything else it reads is an *oracle input*: the
  family lists it in ``oracle_inputs(gen_cfg)``, and the evaluator stamps it into ``metrics.json``;
* ``derived_inputs()`` - the inputs derived from the image that the eval-mode sample builder reads
  and that a shard pass caches beside the shards: ``"masks"`` (``rrg shards masks``: a segmenter's
  masks, ``DecodedSample.masks``) and/or ``"kg"`` (``rrg kg attach``: the retrieved subgraph,
  ``DecodedSample.tensors["kg"]``).  ``rrg generate`` makes them for a new image with that pass's own
  code; an input the model computes itself (e.g. a segmenter inside it) is not listed;
* ``collate(tok)`` - rows -> batch (tensors + plain lists ``keys``, ``study_ids``, ``references``);
* ``generate(model, tok, batch, gen)`` - one :class:`Generation` per study (text, optional trace,
  optional extra fields); the default is one greedy/beam pass over the prompt rows;
* ``eval_variants(gen)`` - named GenConfig variants that ``rrg eval`` also scores in the same run
  (keys ``<name>_<metric>`` in metrics.json; a variant equal to ``gen`` reuses the headline run);
  ``extra_scores`` / ``report_rows`` - names of trainer-floor hooks (trainer/evaluation/eval_hooks.py) that add
  family-level scores to metrics.json and rows to the HTML study cards;
* ``ablations`` + ``ablate(batch, kind)`` - which inputs each ablation blanks (``black``,
  ``shuffle``, ``masks``, ``kg``, ``segment`` ...); ``black`` must blank the image *and* every
  input derived from it;
* ``save_pretrained(model, dir)`` / ``load_pretrained(dir)`` - export and re-import of every module
  and of the family's dataset assets (``asset_names``), round-trip tested.
"""
from __future__ import annotations

import dataclasses
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from configs.schema import ConfigError, Registry, from_dict
from modeling.config import ModelConfig

MODEL_JSON = "rrg_model.json"
FAMILY_PATH_ENV = "RRG_FAMILY_PATH"  # os.pathsep-separated directories of a user's own family packages
TUNING_MODES = ("projector", "lora", "full")


@dataclass
class NoOptions:
    """A family without options of its own."""


@dataclass
class GenConfig:
    """How to generate (from ``eval``): the evaluator builds it, families read what they need."""

    max_new_tokens: int = 120
    num_beams: int = 1
    synced_gpus: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # family-specific switches (eval.family_options)


@dataclass
class Generation:
    """One study's output: the report to score, plus what a family wants kept beside it."""

    id: str
    reference: str
    generated: str
    trace: Optional[str] = None  # e.g. a reasoning chain, or per-topic sentences
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParamGroup:
    """A named set of trainable parameters; ``lr_scale`` multiplies the stage's learning rate."""

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0


class ModelFamily(ABC):
    name: str = ""
    Options: type = NoOptions
    EvalOptions: type = NoOptions  # eval.family_options (a dataclass; its validate(key), if any, is called)
    # batch tensors that come from the image (blanked by "black", moved by "shuffle")
    image_keys: tuple[str, ...] = ("pixel_values",)
    # ablation kind -> what it blanks (shown in metrics.json and the HTML report)
    ablations: dict[str, str] = {"black": "image (and everything derived from it)",
                                 "shuffle": "each study gets another study's image inputs"}
    # dataset assets (shards/sidecars.py) the family reads; copied into its export
    asset_names: tuple[str, ...] = ()
    # images spliced into each row's prompt (``rrg plan`` counts their tokens and encoder FLOPs)
    images_per_row: int = 1
    # its forward takes ``segment_ids`` instead of ``attention_mask``: packed batches (train.packing)
    supports_packing: bool = False

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.opts = parse_options(type(self), cfg)

    def eval_options(self, gen: Optional["GenConfig"]) -> Any:
        """``gen.options`` (``eval.family_options``) as this family's typed EvalOptions."""
        return parse_eval_options(type(self), gen.options if gen is not None else {})

    # ---- text --------------------------------------------------------------------------
    @abstractmethod
    def tokenizer(self, train_texts: Optional[Iterable[str]] = None, save_dir: Optional[str] = None):
        """Load the configured tokenizer, or train one on ``train_texts``; save it to ``save_dir``."""

    def tokenizer_texts(self, records: Iterable[dict], annotations: Iterable[dict] = ()) -> Iterable[str]:
        """Texts a trained tokenizer must cover, from training-split records (default: the reports)."""
        for r in records:
            yield r["report"]["text"]

    # ---- model -------------------------------------------------------------------------
    def text_len(self, target: str = "report") -> int:
        """Prompt + target tokens of a row trained on ``target`` (``rrg plan``'s sequence length)."""
        return self.cfg.max_text_len

    def image_tokens(self, patches: int) -> int:
        """LM tokens one image becomes (default: one per patch; a Q-Former family: its queries)."""
        return patches

    def num_image_tokens(self, model: nn.Module) -> int:
        """Tokens the built model's vision tower outputs per image: its own count from a dry forward, not
        config arithmetic (what packing reserves per image; :meth:`image_tokens` maps it to LM positions)."""
        return int(model.vision.num_patches)

    def prompt_texts(self) -> list[str]:
        """Every prompt text the family shows the LM (a scratch tokenizer, e.g. ``rrg plan``'s, covers them)."""
        return []

    def enable_activation_checkpointing(self, model: nn.Module) -> bool:
        """Recompute activations in the backward pass where the model can; False: it has no such layers."""
        hook = getattr(model, "enable_activation_checkpointing", None)
        if hook is None:
            return False
        hook()
        return True

    def planning_assets(self) -> dict[str, Any]:
        """Shape-only stand-ins for the family's dataset assets, so ``rrg plan`` builds it without data."""
        return {}

    @abstractmethod
    def build_model(self, tok, assets: Optional[dict[str, Any]] = None) -> nn.Module:
        """The model, random-initialised from hf_configs or loaded from local paths."""

    @abstractmethod
    def trainable_groups(self, model: nn.Module, mode: str, stage: Optional[Any] = None) -> list[ParamGroup]:
        """Named groups that train in ``mode`` (may wrap parts of ``model`` in place, e.g. LoRA)."""

    # ---- samples -----------------------------------------------------------------------
    @abstractmethod
    def sample_builder(self, tok, mode: str, target: str = "report",
                       gen: Optional[GenConfig] = None) -> Callable[[Any], list[dict]]:
        """``DecodedSample -> rows``; ``mode`` is "train" or "eval"; ``gen`` the eval GenConfig (see above)."""

    @abstractmethod
    def collate(self, tok) -> Callable[[list[dict]], dict]:
        """rows -> batch dict."""

    def derived_inputs(self) -> tuple[str, ...]:
        """Shard passes whose per-study output the eval-mode builder reads (``"masks"``, ``"kg"``); default none."""
        return ()

    def oracle_inputs(self, gen: GenConfig) -> list[str]:
        """Fields beyond the image (and what derives from it) that eval-mode samples read."""
        return []

    # ---- evaluation hooks ----------------------------------------------------------------
    # names of trainer-floor hooks (trainer/evaluation/eval_hooks.py): scores over the prediction records,
    # and extra HTML per study card; a family names them, the evaluator never branches on families
    extra_scores: tuple[str, ...] = ()
    report_rows: tuple[str, ...] = ()
    report_sections: tuple[str, ...] = ()  # trainer/evaluation/eval_hooks.py SECTION_HOOKS: (run name, records) -> html

    def eval_variants(self, gen: GenConfig) -> dict[str, GenConfig]:
        """Named variants of ``gen`` scored beside the headline run (default: none)."""
        return {}

    # ---- generation and ablation ----------------------------------------------------------
    def generate(self, model: nn.Module, tok, batch: dict, gen: GenConfig) -> list[Generation]:
        """Default: one pass over each study's prompt row (``model.generate`` on the batch tensors)."""
        inputs = {k: v for k, v in batch.items() if torch.is_tensor(v) and k not in ("sample_weight", "labels")}
        out = model.generate(**inputs, max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams,
                             synced_gpus=gen.synced_gpus)
        texts = tok.batch_decode(out, skip_special_tokens=True)
        return [Generation(batch["study_ids"][i], batch["references"][i], texts[i].strip())
                for i, w in enumerate(batch["sample_weight"].tolist()) if w > 0]

    def ablate(self, batch: dict, kind: str) -> dict:
        """The batch with the inputs of ablation ``kind`` blanked (``shuffle`` is done by the caller)."""
        if kind not in self.ablations:
            raise ConfigError("--image-ablation", f"family '{self.name}' has no ablation '{kind}'; "
                              f"it has {sorted(self.ablations)}")
        if kind == "black":
            return {**batch, **{k: torch.zeros_like(batch[k]) for k in self.image_keys if k in batch}}
        raise NotImplementedError(f"{self.name}: ablation '{kind}' declared but not implemented")

    # ---- export ------------------------------------------------------------------------
    @abstractmethod
    def save_pretrained(self, model: nn.Module, directory: str, merge: bool = False) -> None:
        """Write every module (plain HF/peft/safetensors), the tokenizer and ``rrg_model.json``."""

    @classmethod
    @abstractmethod
    def load_pretrained(cls, directory: str) -> nn.Module:
        """Rebuild a model written by ``save_pretrained``."""


FAMILIES: Registry[type[ModelFamily]] = Registry("model family")


class TargetError(ValueError):
    """A training sample lacks the text its stage trains on (names the study and the field)."""


def target_text(sample: Any, target: str) -> str:
    """The text a stage trains on: the report, or an annotation overlay's ``text`` (reasoning, ...)."""
    if target == "report":
        return sample.report
    entry = sample.annotations.get(target)
    if entry is None:
        raise TargetError(f"study {sample.key} (shard {sample.shard}) has no '{target}' annotation: "
                          f"run the annotator that writes it, or train on target 'report'")
    return entry["text"] if isinstance(entry, dict) else str(entry)


def parse_eval_options(family_cls: type[ModelFamily], options: Any) -> Any:
    """``eval.family_options`` as the family's typed EvalOptions dataclass, checked (unknown keys, bad types and
    the dataclass's own ``validate(key)``)."""
    if dataclasses.is_dataclass(options):
        return options
    opts = from_dict(family_cls.EvalOptions, dict(options or {}), "eval.family_options")
    if hasattr(opts, "validate"):
        opts.validate("eval.family_options")
    return opts


def parse_options(family_cls: type[ModelFamily], cfg: ModelConfig) -> Any:
    """``model.options`` as the family's typed Options dataclass (unknown keys and bad types raise)."""
    if dataclasses.is_dataclass(cfg.options):
        return cfg.options
    return from_dict(family_cls.Options, cfg.options or {}, "model.options")


class FamilyImportError(ImportError):
    """A family package that does not import (names the package, its directory and the underlying error)."""


def family_packages() -> list[tuple[str, str]]:
    """(import name, directory) of every family package: each subpackage of ``modeling.families``, then each
    package (a directory with an ``__init__.py``) directly inside a directory of ``RRG_FAMILY_PATH``, which
    imports under its own top-level name (that directory joins ``sys.path``)."""
    import modeling.families as shipped
    from configs.plugins import plugin_packages

    return plugin_packages(shipped, FAMILY_PATH_ENV, FamilyImportError)


def import_families() -> None:
    """Import every family package (:func:`family_packages`), so that each registers its families.

    A package that fails to import raises :class:`FamilyImportError` (never a silent skip); so does one
    shadowed by another module of its name; two packages registering one family name fail in the second.
    """
    from configs.plugins import import_plugins

    import_plugins(family_packages(), "family", FamilyImportError)


def family_class(name: str) -> type[ModelFamily]:
    import_families()
    return FAMILIES.get(name, "model.family")


def build_family(model_cfg: ModelConfig) -> ModelFamily:
    return family_class(model_cfg.family)(model_cfg)


def write_model_json(directory: str, meta: dict) -> None:
    """``rrg_model.json`` of an export (``meta["family"]`` names its family); written last, after every module."""
    with open(os.path.join(directory, MODEL_JSON), "w") as fh:
        json.dump(meta, fh, indent=2)


def read_model_json(directory: str) -> tuple[str, ModelConfig, dict]:
    """(family name, ModelConfig, the whole json) of an exported model directory."""
    path = os.path.join(directory, MODEL_JSON)
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as err:
        raise ConfigError("--model-dir", f"{directory} is not an rrg export ({MODEL_JSON}: {err})") from None
    model_config = dict(meta["model_config"])
    renamed = {"attn_implementation": "attention"}  # exports written before the rename
    vision = dict(model_config.get("vision", {}))
    if "select_layer" in vision:
        vision["feature_layer"] = vision.pop("select_layer")
        model_config["vision"] = vision
    for old, new in renamed.items():
        if old in model_config:
            model_config[new] = model_config.pop(old)
    return meta["family"], from_dict(ModelConfig, model_config, "model"), meta


def load_pretrained(directory: str) -> nn.Module:
    """Load any rrg export directory, dispatching on the family recorded in ``rrg_model.json``."""
    family, _, _ = read_model_json(directory)
    return family_class(family).load_pretrained(directory)
