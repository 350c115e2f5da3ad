"""LLaVA-TA (``llava_ta``) and LLaVA-T (``llava_t``): per-topic report generation on the family contract.

Each topic row sees two images, the global image I and the segmented image S (I blanked
outside the topic's CXAS regions, topic_rows.py beside this module); both pass through the one shared,
frozen vision encoder and the MLP projector and are spliced in at the two ``<image>``
placeholders of "Given the image <image> and the segmented part <image>, describe the findings
for the topic: {topic}."  The target is the topic's sentence from the ``topics`` overlay
(``rrg annotate topics``).  ``llava_t`` is the same without S (one ``<image>``).

Training (``train.stages``, target ``topics``): stage 1 tunes the projector only; stage 2 wraps the
LM with LoRA (``train.lora.r``, 128 in the paper) and tunes it with the projector and a light
multi-label *topic head* (linear, on the mean-pooled encoder features of I) that learns the
training split's topics with a BCE loss added to the LM loss.

Generation asks one sentence per selected topic and joins them in ontology order.  Selection
(``eval.family_options.selection`` or ``model.options.selection``): ``all`` topics,
``predicted`` (head probability >= ``threshold``, at least the top one), or ``oracle`` (the
reference's topics from the ``topics`` overlay of the eval split: an *oracle input*, stamped
into metrics.json).  Ablations: ``segment`` blanks S only, ``black`` blanks I and S.

The ontology is the ``topic_ontology`` dataset asset, one object for the model and the sample
builders: ``build_model(tok, assets)`` binds the shards' asset to the family (training, export);
a family built from an export's config reads the export's copy (``<export>/assets``: evaluation,
``rrg generate``); the built-in table only where neither exists (unit tests, ``rrg plan``).
``model.options.region_channels`` maps regions to the mask channels of another segmenter.

Training batches pack (``train.packing``, modeling/packing.py): each topic row is one packed
segment carrying its k image placeholders, and its weight stays ``1 / num_rows`` of its study.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Iterable, Literal, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from configs.schema import ConfigError
from modeling.family import FAMILIES, MODEL_JSON, GenConfig, Generation, ModelFamily, ParamGroup
from modeling.families.llava_ta.topic_rows import (PROMPT_T, PROMPT_TA, TopicRowBuilder, collate_topic_rows,
                                                   prompt_ids, topic_prompt)
from modeling.formats import build_causal_lm
from modeling.tuning import TuningSpec, lora_parameters, wrap_lora
from modeling.projector import build_projector
from modeling.templates import get_template
from modeling.vision import build_vision_encoder, image_stats, input_size, preprocess_image
from modeling.vlm import VLM, VLMOutput, black_image, export_family, image_text_embeds, prompt_tokenizer, \
    restore_lm_tuning
from shards.passes.topics.ontology import ASSET_FILE, ASSET_NAME, Ontology

SELECTIONS = ("all", "predicted", "oracle")


@dataclass
class TopicEvalOptions:
    """``eval.family_options`` of llava_ta / llava_t: which topics generate, and which selections are scored."""

    selection: Optional[str] = None  # all | predicted | oracle; default model.options.selection
    threshold: Optional[float] = None  # predicted selection's head probability; default model.options.threshold
    selections: list[str] = field(default_factory=lambda: list(SELECTIONS))  # scored side by side (eval_variants)

    def validate(self, key: str) -> None:
        if self.selection is not None and self.selection not in SELECTIONS:
            raise ConfigError(f"{key}.selection", f"must be one of {SELECTIONS}, got {self.selection!r}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"{key}.threshold", f"must be within (0, 1), got {self.threshold}")
        bad = [s for s in self.selections if s not in SELECTIONS]
        if bad:
            raise ConfigError(f"{key}.selections", f"unknown {bad}; choose from {SELECTIONS}")


@dataclass
class TopicOptions:
    """``model.options`` of llava_ta / llava_t."""

    crop: bool = False  # S cropped to the bounding box of the topic's regions
    selection: Literal["all", "predicted", "oracle"] = "predicted"
    threshold: float = 0.5  # predicted selection: head probability (eval.family_options.threshold overrides)
    head_loss_weight: float = 1.0
    # region -> mask channels, replacing the ontology's table for those regions: masks from a segmenter
    # whose channels are named otherwise (`rrg shards masks` with CXAS: {vertebrae: [spine], ...})
    region_channels: dict[str, list[str]] = field(default_factory=dict)


class LlavaTA(VLM):
    """The shared VLM's encoder + projector + LM (modeling/vlm.py), k images per row, plus the topic head."""

    family_name = "llava_ta"

    def __init__(self, cfg, vision, projector, lm, tokenizer, onto: Ontology, opts: TopicOptions):
        super().__init__(cfg, vision, projector, lm, tokenizer)
        self.onto, self.opts = onto, opts
        self.topic_head = nn.Linear(vision.hidden_size, len(onto.topics))

    def head_logits(self, vision_feats: torch.Tensor) -> torch.Tensor:
        w = self.topic_head.weight
        return self.topic_head(vision_feats.mean(1).to(w.dtype)).float()  # fp32 logits for the BCE

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, sample_weight: Optional[torch.Tensor] = None,
                topic_targets: Optional[torch.Tensor] = None, segment_ids: Optional[torch.Tensor] = None) -> VLMOutput:
        """Topic rows (``pixel_values`` (R, k, C, H, W)); ``segment_ids`` instead of ``attention_mask``:
        the rows packed into fewer LM rows (modeling/packing.py; per-row tensors in packed order)."""
        if labels is None or topic_targets is None:
            raise ValueError("llava_ta's forward trains on topic rows: labels and topic_targets are needed")
        packed = segment_ids is not None
        rows, k = pixel_values.shape[:2]
        vis = self.vision(pixel_values.flatten(0, 1))  # (R * k, N, Hv): one shared encoder for I and S
        embeds, mask, labels = image_text_embeds(self.lm, input_ids, segment_ids if packed else attention_mask,
                                                 self.projector(vis), self.image_token_id, labels)
        out = self.lm_forward(embeds, mask, labels, sample_weight, packed)
        head = self.head_logits(vis.view(rows, k, *vis.shape[1:])[:, 0])
        bce = F.binary_cross_entropy_with_logits(head, topic_targets.float(), reduction="none").mean(1)
        w = sample_weight.float() if sample_weight is not None else torch.ones_like(bce)
        out.loss = out.loss + self.opts.head_loss_weight * (bce * w).sum() / w.sum().clamp(min=1e-12)
        return out

    @torch.no_grad()
    def select_topics(self, global_image: torch.Tensor, selection: str,
                      oracle: Optional[list[list[str]]] = None, threshold: Optional[float] = None) -> list[list[str]]:
        names = self.onto.names
        if selection == "all":
            return [list(names) for _ in range(global_image.shape[0])]
        if selection == "oracle":
            if oracle is None:
                raise ConfigError("selection", "oracle selection needs the eval split's topics overlay")
            return [[t for t in names if t in set(o)] for o in oracle]
        probs = torch.sigmoid(self.head_logits(self.vision(global_image)))
        out = []
        for p in probs:
            chosen = [names[i] for i in range(len(names)) if p[i] >= (threshold or self.opts.threshold)]
            out.append(chosen or [names[int(p.argmax())]])
        return out

    @torch.no_grad()
    def generate_topics(self, batch: dict, selection: str, max_new_tokens: int, chunk: int = 16,
                        threshold: Optional[float] = None):
        """Per study: [(topic, sentence)] in ontology order, and the selected topics."""
        selected = self.select_topics(batch["global_image"], selection, batch.get("oracle_topics"), threshold)
        segmented = "segments" in batch
        if segmented and list(batch["segment_topics"]) != self.onto.names:
            raise ValueError(f"eval rows carry S for topics {batch['segment_topics']}, the model's ontology has "
                             f"{self.onto.names}: build the sample builder from the same ontology asset")
        jobs = [(i, t) for i, topics in enumerate(selected) for t in topics]
        texts: dict[tuple[int, str], str] = {}
        for start in range(0, len(jobs), chunk):
            part = jobs[start:start + chunk]
            template = get_template(self.cfg.lm.chat_template, tok=self.tokenizer)
            prompts = [prompt_ids(self.tokenizer, topic_prompt(self.onto.by_name[t].phrase, segmented),
                                  self.cfg.max_text_len, template) for _, t in part]
            length = max(map(len, prompts))
            ids = torch.full((len(part), length), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, p in enumerate(prompts):
                ids[j, length - len(p):], mask[j, length - len(p):] = torch.tensor(p), 1
            images = [batch["global_image"][i] for i, _ in part]
            pv = torch.stack(images)[:, None]
            if segmented:
                segs = torch.stack([batch["segments"][i, self.onto.order[t]] for i, t in part])[:, None]
                pv = torch.cat([pv, segs], 1)
            out = self.generate(pv, ids.to(pv.device), mask.to(pv.device), max_new_tokens=max_new_tokens)
            for (i, t), text in zip(part, self.tokenizer.batch_decode(out, skip_special_tokens=True)):
                texts[(i, t)] = text.strip()
        return [[(t, texts[(i, t)]) for t in topics] for i, topics in enumerate(selected)], selected

    def save_pretrained(self, directory: str, merge: bool = False) -> None:
        super().save_pretrained(directory, merge=merge)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.topic_head.state_dict().items()},
                  os.path.join(directory, "topic_head.safetensors"))
        os.makedirs(os.path.join(directory, "assets", ASSET_NAME), exist_ok=True)
        with open(os.path.join(directory, "assets", ASSET_NAME, ASSET_FILE), "w") as fh:
            json.dump(self.onto.to_json(), fh, indent=1)

    @classmethod
    def from_pretrained(cls, directory: str, cfg=None) -> "LlavaTA":
        family, meta = export_family(directory, cfg)
        with open(os.path.join(directory, "assets", ASSET_NAME, ASSET_FILE)) as fh:
            model = family.build_model(family.tokenizer(), {ASSET_NAME: Ontology.from_json(json.load(fh))})
        model.projector.load_state_dict(load_file(os.path.join(directory, "projector.safetensors")))
        model.topic_head.load_state_dict(load_file(os.path.join(directory, "topic_head.safetensors")))
        restore_lm_tuning(model, directory, meta)
        return model


def _export_ontology(cfg) -> Optional[Ontology]:
    """The ontology an export carries, when ``cfg`` is an export's config (``export_family`` points
    ``lm.path`` at ``<export>/lm``; ``<export>`` holds rrg_model.json and ``assets/topic_ontology``)."""
    if not cfg.lm.path:
        return None
    root = os.path.dirname(os.path.normpath(cfg.lm.path))
    path = os.path.join(root, "assets", ASSET_NAME, ASSET_FILE)
    if not (os.path.isfile(os.path.join(root, MODEL_JSON)) and os.path.isfile(path)):
        return None
    with open(path) as fh:
        return Ontology.from_json(json.load(fh))


@FAMILIES.register("llava_ta")
class LlavaTAFamily(ModelFamily):
    name = "llava_ta"
    segmented = True
    Options = TopicOptions
    EvalOptions = TopicEvalOptions
    image_keys = ("pixel_values", "global_image", "segments")
    ablations = {"black": "global image I and segmented image S", "segment": "segmented image S only",
                 "shuffle": "each study gets another study's images"}
    asset_names = (ASSET_NAME,)
    supports_packing = True
    extra_scores = ("topic_scores",)  # trainer/evaluation/eval_hooks.py
    report_rows = ("topic_rows",)

    @property
    def images_per_row(self) -> int:  # I and S, or I alone (llava_t)
        return 2 if self.segmented else 1

    def __init__(self, cfg):
        super().__init__(cfg)
        if not 0.0 < self.opts.threshold < 1.0:
            raise ConfigError("model.options.threshold", "must be within (0, 1)")
        self._onto: Optional[Ontology] = None
        self._with_options(Ontology())  # a bad region table fails when the family is built

    def _with_options(self, onto: Ontology) -> Ontology:
        try:
            return onto.with_region_channels(self.opts.region_channels)
        except ValueError as err:
            raise ConfigError("model.options.region_channels", str(err)) from None

    def ontology(self, assets: Optional[dict[str, Any]] = None) -> Ontology:
        """The topic ontology of this family instance (see the module docstring), region table from options.

        ``assets`` holding ``topic_ontology`` (an Asset or an Ontology) binds it; later calls return it."""
        asset = (assets or {}).get(ASSET_NAME)
        if asset is not None:
            self._onto = self._with_options(asset if isinstance(asset, Ontology)
                                            else Ontology.from_json(asset.read_json(ASSET_FILE)))
        elif self._onto is None:
            self._onto = self._with_options(_export_ontology(self.cfg) or Ontology())
        return self._onto

    def tokenizer(self, train_texts: Optional[Iterable[str]] = None, save_dir: Optional[str] = None):
        return prompt_tokenizer(self.cfg, self._topic_prompts, train_texts, save_dir)

    def _topic_prompts(self) -> list[str]:
        """Every topic's prompt text (what a trained tokenizer must cover beside the reports)."""
        return [(PROMPT_TA if self.segmented else PROMPT_T).format(image="", topic=t.phrase)
                for t in self.ontology().topics]

    def tokenizer_texts(self, records: Iterable[dict], annotations: Iterable[dict] = ()) -> Iterable[str]:
        for r in records:
            yield r["report"]["text"]
        for a in annotations:
            for row in (a or {}).get("rows", []):
                yield row["sentence"]

    def build_model(self, tok, assets: Optional[dict[str, Any]] = None) -> LlavaTA:
        from modeling.attention import hf_attn_name

        onto = self.ontology(assets)  # the sample builders of this family use the same one
        attn = hf_attn_name(self.cfg.attention)
        vision = build_vision_encoder(self.cfg.vision, attn)
        lm = build_causal_lm(self.cfg.lm, tok, attn)
        projector = build_projector(self.cfg.projector, vision.hidden_size, lm.config.hidden_size)
        model = LlavaTA(self.cfg, vision, projector, lm, tok, onto, self.opts)
        model.family_name = self.name
        return model

    def trainable_groups(self, model: LlavaTA, mode: str, spec: Optional[TuningSpec] = None) -> list[ParamGroup]:
        """projector: stage 1; lora: stage 2 (LoRA on the LM + projector + topic head); full: the LM too."""
        spec = spec or TuningSpec(mode)
        groups = [ParamGroup("projector", list(model.projector.parameters()))]
        if mode == "projector":
            return groups
        if mode == "lora":
            model.lm = wrap_lora(model.lm, spec.lora)
            groups.append(ParamGroup("lora", lora_parameters(model.lm)))
        elif mode == "full":
            groups.append(ParamGroup("lm", list(model.lm.parameters())))
        else:
            raise ConfigError("train.tuning", f"llava_ta trains 'projector' then 'lora' (or 'full'), got {mode!r}")
        return groups + [ParamGroup("topic_head", list(model.topic_head.parameters()))]

    def sample_builder(self, tok, mode: str, target: str = "topics", gen: Optional[GenConfig] = None):
        """Train: one row per annotated topic (target ``topics``; target ``report`` gives one whole-report
        row per study, used only for the trainer's held-out reference loss).  Eval: one study row, which
        carries the reference's topics only when ``gen`` selects ``oracle`` (the declared oracle input)."""
        if target not in ("topics", "report"):
            raise ConfigError("train.stages.target", f"{self.name} trains on 'topics', got {target!r}")
        mean, std = image_stats(self.cfg.vision)
        pre = partial(preprocess_image, size=input_size(self.cfg.vision), channels=self.cfg.vision.channels,
                      mean=mean, std=std)
        return TopicRowBuilder(tok, self.ontology(), pre, self.cfg.max_text_len, self.segmented, self.opts.crop,
                               train=mode == "train", oracle=mode != "train" and self._selection(gen) == "oracle",
                               whole_report=target == "report",
                               template=get_template(self.cfg.lm.chat_template, tok=tok))

    def collate(self, tok) -> Callable[[list[dict]], dict]:
        return partial(collate_topic_rows, pad_token_id=tok.pad_token_id)

    def derived_inputs(self) -> tuple[str, ...]:
        """The segmented image S comes from region masks: a segmenter's (``rrg shards masks``), also for a new
        image in ``rrg generate``; LLaVA-T (no S) needs nothing derived."""
        return ("masks",) if self.segmented else ()

    def _selection(self, gen: Optional[GenConfig]) -> str:
        sel = self.eval_options(gen).selection or self.opts.selection
        if sel not in SELECTIONS:
            raise ConfigError("model.options.selection", f"must be one of {SELECTIONS}, got {sel!r}")
        return sel

    def _threshold(self, gen: GenConfig) -> float:
        """``predicted`` selection's head-probability threshold (eval.family_options.threshold overrides)."""
        t = self.eval_options(gen).threshold
        if t is None and not 0.0 < self.opts.threshold < 1.0:
            raise ConfigError("model.options.threshold", f"must be within (0, 1), got {self.opts.threshold}")
        return float(self.opts.threshold if t is None else t)

    def eval_variants(self, gen: GenConfig) -> dict[str, GenConfig]:
        """``selection_<s>`` for every selection in ``eval.family_options.selections`` (default all three)."""
        wanted = self.eval_options(gen).selections
        head = self._selection(gen)
        return {f"selection_{s}": gen if s == head else replace(gen, options={**gen.options, "selection": s})
                for s in wanted}

    def oracle_inputs(self, gen: GenConfig) -> list[str]:
        return ["reference topics (topics overlay of the eval split)"] if self._selection(gen) == "oracle" else []

    def generate(self, model: LlavaTA, tok, batch: dict, gen: GenConfig) -> list[Generation]:
        per_study, selected = model.generate_topics(batch, self._selection(gen), gen.max_new_tokens,
                                                    threshold=self._threshold(gen))
        out = []
        for i, rows in enumerate(per_study):
            if float(batch["sample_weight"][i]) <= 0:
                continue
            text = " ".join(s for _, s in rows if s)
            out.append(Generation(batch["study_ids"][i], batch["references"][i], text,
                                  trace=json.dumps([{"topic": t, "sentence": s, "channels": model.onto.channels(t)}
                                                    for t, s in rows]),  # channels: the report's overlay
                                  extra={"topics": selected[i], "selection": self._selection(gen)}))
        return out

    def _black(self, x: torch.Tensor) -> torch.Tensor:
        return black_image(x, self.cfg.vision)

    def ablate(self, batch: dict, kind: str) -> dict:
        if kind == "segment" and self.segmented:
            if "segments" in batch:
                return {**batch, "segments": self._black(batch["segments"])}
            pv = batch["pixel_values"].clone()
            pv[:, 1:] = self._black(pv[:, 1:])
            return {**batch, "pixel_values": pv}
        if kind == "black":
            return {**batch, **{k: self._black(batch[k]) for k in self.image_keys if k in batch}}
        return super().ablate(batch, kind)

    def save_pretrained(self, model: LlavaTA, directory: str, merge: bool = False) -> None:
        model.save_pretrained(directory, merge=merge)

    @classmethod
    def load_pretrained(cls, directory: str) -> LlavaTA:
        return LlavaTA.from_pretrained(directory)


@FAMILIES.register("llava_t")
class LlavaTFamily(LlavaTAFamily):
    """LLaVA-T: the global image only (one ``<image>``); ``segment`` has nothing to blank."""

    name = "llava_t"
    segmented = False
    ablations = {"black": "global image I", "shuffle": "each study gets another study's images"}
