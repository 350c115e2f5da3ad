"""LLaVA-TA inputs: the segmented image S of a topic, and a study's fan-out into topic rows.

``segment_image`` keeps the global image I inside the union of the topic's region masks and
blanks (zeros) everything else; with ``crop`` it is then cut to the bounding box of that
union (the vision preprocessing resizes it back to the encoder's size).  Region masks come
from ``DecodedSample.masks`` by channel name through the ontology's region table
(shards/passes/topics/ontology.py; ``model.options.region_channels`` replaces it per region), so the
demo's drawn masks and a segmenter's (``rrg shards masks``, e.g. CXAS channels) both work.

A training study fans out into one row per annotated topic (the ``topics`` sidecar, in
ontology order), each row weighted ``1 / num_rows`` so that the loss and the throughput
figures count studies, not rows.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from configs.schema import ConfigError
from modeling.templates import IMAGE_TOKEN, PromptCodec, Template, get_template
from shards.passes.topics.ontology import Ontology

PROMPT_TA = "Given the image {image} and the segmented part {image}, describe the findings for the topic: {topic}."
PROMPT_T = "Given the image {image}, describe the findings for the topic: {topic}."
IGNORE = -100


class TopicDataError(ValueError):
    """A study lacks what its topic rows need (masks for a region, or its topic annotation)."""


def region_mask(masks: Optional[np.ndarray], channels: list[str], wanted: list[str], key: str = "") -> np.ndarray:
    """Union of the wanted mask channels, bool (H, W)."""
    if masks is None:
        raise TopicDataError(f"study {key}: no masks, but LLaVA-TA's segmented image needs region masks")
    missing = [c for c in wanted if c not in channels]
    if missing:
        raise TopicDataError(f"study {key}: mask channel(s) {missing} missing (has {channels}); map the "
                             f"regions to these channels (model.options.region_channels) or give the shards "
                             f"masks for every region")
    return np.any(masks[[channels.index(c) for c in wanted]], axis=0)


def segment_image(image: np.ndarray, mask: np.ndarray, crop: bool = False) -> np.ndarray:
    """S: ``image`` where ``mask`` is set, 0 elsewhere; optionally cropped to the mask's bounding box."""
    if mask.shape != image.shape[:2]:
        raise TopicDataError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    seg = np.where(mask if image.ndim == 2 else mask[..., None], image, 0).astype(image.dtype)
    if crop and mask.any():
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        seg = seg[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return seg


def topic_prompt(topic_phrase: str, segmented: bool) -> str:
    return (PROMPT_TA if segmented else PROMPT_T).format(image=IMAGE_TOKEN, topic=topic_phrase)


def topic_codec(tok, text: str, max_len: int, template: Template) -> PromptCodec:
    """A topic prompt (its image placeholders inside) in the run's chat template; targets join it as one
    sequence.  The plain template gives ``text + "\n"``."""
    try:
        return PromptCodec(tok, template, "", max_len, text=template.wrap(text))
    except ConfigError as err:
        raise TopicDataError(f"model.max_text_len {max_len} leaves no room after the topic prompt ({err.why})") from None


def prompt_ids(tok, text: str, max_len: int, template: Optional[Template] = None) -> list[int]:
    """bos + the topic prompt in the chat template: what per-topic generation starts from."""
    return topic_codec(tok, text, max_len, template or get_template("plain")).ids


def sentence_target(sentence: str, template: Template) -> str:
    """A topic sentence as the target text: after a plain prompt it keeps its word-boundary space."""
    return sentence if template.report_prefix else " " + sentence


class TopicRowBuilder:
    """DecodedSample -> topic rows (train) or one study row with every topic's S (eval)."""

    def __init__(self, tok, onto: Ontology, preprocess, max_text_len: int, segmented: bool, crop: bool,
                 train: bool, oracle: bool = False, whole_report: bool = False, template: Optional[Template] = None):
        self.tok, self.onto, self.preprocess, self.whole_report = tok, onto, preprocess, whole_report
        self.max_len, self.segmented, self.crop, self.train, self.oracle = max_text_len, segmented, crop, train, oracle
        self.template = template or get_template("plain")
        self.codecs = {t.name: topic_codec(tok, topic_prompt(t.phrase, segmented), max_text_len, self.template)
                       for t in onto.topics}
        self.prompts = {name: c.ids for name, c in self.codecs.items()}

    def images(self, sample: Any, topic: str) -> torch.Tensor:
        """(k, C, H, W): I, and S for the topic when segmented."""
        image = sample.images[0]
        views = [self.preprocess(image)]
        if self.segmented:
            mask = region_mask(sample.masks, list(sample.mask_channels), self.onto.channels(topic), sample.key)
            views.append(self.preprocess(segment_image(image, mask, self.crop)))
        return torch.stack(views)

    def topic_targets(self, topics: list[str]) -> torch.Tensor:
        t = torch.zeros(len(self.onto.topics))
        for name in topics:
            t[self.onto.order[name]] = 1.0
        return t

    def annotated_rows(self, sample: Any) -> list[dict]:
        entry = sample.annotations.get("topics")
        if entry is None:
            raise TopicDataError(f"study {sample.key} ({sample.shard}) has no 'topics' annotation: "
                                 f"run `rrg annotate topics CONFIG` for its split first")
        return self.onto.sort([r for r in entry["rows"] if r["topic"] in self.onto.order])

    def __call__(self, sample: Any) -> list[dict]:
        study_id = sample.record.get("study_id", sample.key)
        if not self.train:
            return [self.eval_row(sample, study_id)]
        rows = self.annotated_rows(sample) if not self.whole_report else \
            [{"topic": "aux-impression", "sentence": sample.report}]
        targets = self.topic_targets([r["topic"] for r in rows])
        out = []
        for r in rows:
            ids, labels = self.codecs[r["topic"]].train_ids(sentence_target(r["sentence"], self.template))
            out.append({"pixel_values": self.images(sample, r["topic"]),
                        "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                        "sample_weight": 1.0 / len(rows), "topic_targets": targets, "key": sample.key,
                        "study_id": study_id, "topic": r["topic"]})
        return out

    def eval_row(self, sample: Any, study_id: str) -> dict:
        """The global image, every topic's S (T, C, H, W), the raw reference; oracle topics only in oracle mode."""
        image = sample.images[0]
        row = {"global_image": self.preprocess(image), "key": sample.key, "study_id": study_id,
               "reference": sample.report}
        if self.segmented:
            done: dict[tuple[str, ...], torch.Tensor] = {}  # topics sharing regions share S
            for t in self.onto.names:
                chans = tuple(self.onto.channels(t))
                if chans not in done:
                    mask = region_mask(sample.masks, list(sample.mask_channels), list(chans), sample.key)
                    done[chans] = self.preprocess(segment_image(image, mask, self.crop))
            row["segments"] = torch.stack([done[tuple(self.onto.channels(t))] for t in self.onto.names])
            row["segment_topics"] = self.onto.names  # which topic each S is (the model checks its own)
        if self.oracle:
            if sample.annotations.get("topics") is None:
                raise TopicDataError(f"study {sample.key} ({sample.shard}): the oracle selection reads the eval split's "
                                     f"reference topics: annotate it (data.passes.topics.splits) or leave 'oracle' out of "
                                     f"eval.family_options.selections")
            row["oracle_topics"] = [r["topic"] for r in self.annotated_rows(sample)]
        return row


def collate_topic_rows(items: list, pad_token_id: int) -> dict:
    """Training rows (right-padded, labels) or eval study rows (images stacked, plain lists kept).

    ``items`` are builder outputs: a study's list of rows, or single rows (the reader may give either)."""
    items = [row for it in items for row in (it if isinstance(it, list) else [it])]
    if "input_ids" not in items[0]:
        batch: dict[str, Any] = {"global_image": torch.stack([it["global_image"] for it in items]),
                                 "keys": [it["key"] for it in items], "study_ids": [it["study_id"] for it in items],
                                 "references": [it["reference"] for it in items],
                                 "sample_weight": torch.tensor([float(it.get("sample_weight", 1.0)) for it in items])}
        if "segments" in items[0]:
            batch["segments"] = torch.stack([it["segments"] for it in items])
            batch["segment_topics"] = items[0]["segment_topics"]
        if "oracle_topics" in items[0]:
            batch["oracle_topics"] = [it["oracle_topics"] for it in items]
        return batch
    length = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n], mask[i, :n], labels[i, :n] = it["input_ids"], 1, it["labels"]
    return {"pixel_values": torch.stack([it["pixel_values"] for it in items]), "input_ids": ids,
            "attention_mask": mask, "labels": labels,
            "sample_weight": torch.tensor([float(it["sample_weight"]) for it in items]),
            "topic_targets": torch.stack([it["topic_targets"] for it in items]),
            "keys": [it["key"] for it in items], "study_ids": [it["study_id"] for it in items],
            "topics": [it["topic"] for it in items]}
