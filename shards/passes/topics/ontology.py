"""The LLaVA-TA topic ontology and its region table, published as a dataset asset.

Topics are hierarchical by prefix: pathology topics ``disease-*`` (one per CheXpert
observation a sentence can be about), anatomy topics ``organ-*`` (normal/descriptive
statements about a structure) and auxiliary topics ``aux-*`` (support devices, the global
impression).  The list order is *the* order: the decomposer sorts a study's topic rows by it
and inference joins per-topic sentences in it.  One auxiliary topic is the ontology's *fallback*
(``aux-other``, "other findings", all regions): a statement no other topic covers goes there,
so every kept sentence of a report has exactly one topic.

Every topic maps to one or more of the 7 CXAS regions; every region maps to the mask channels
that draw it (``REGION_CHANNELS``; the demo phantoms draw all of them, see shards/demo.py).
``write_ontology_asset`` publishes the whole table as the ``topic_ontology`` asset so a trained
model's export carries the exact ontology it was trained with.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

REGIONS = ("lungs", "heart", "mediastinum", "diaphragm", "ribs", "vertebrae", "abdomen")
REGION_CHANNELS = {"lungs": ("left_lung", "right_lung"), "heart": ("heart",), "mediastinum": ("mediastinum",),
                   "diaphragm": ("diaphragm",), "ribs": ("ribs",), "vertebrae": ("vertebrae",),
                   "abdomen": ("abdomen",)}
ASSET_NAME, ASSET_FILE, ONTOLOGY_VERSION = "topic_ontology", "ontology.json", "2"
FALLBACK = "aux-other"  # the topic of statements no other topic covers


@dataclass(frozen=True)
class Topic:
    name: str  # "disease-pleural_effusion"
    phrase: str  # what the prompt says: "pleural effusion"
    regions: tuple[str, ...]
    label: Optional[str] = None  # the CheXpert observation of a pathology topic

    @property
    def kind(self) -> str:
        return {"disease": "pathology", "organ": "anatomy", "aux": "auxiliary"}[self.name.split("-", 1)[0]]

    def absent_sentence(self) -> str:
        """The standardised negative: "Pneumothorax is absent." """
        verb = "are" if self.phrase.endswith("s") and not self.phrase.endswith("sis") else "is"
        return f"{self.phrase[0].upper()}{self.phrase[1:]} {verb} absent."


def _t(name: str, phrase: str, regions: str, label: Optional[str] = None) -> Topic:
    return Topic(name, phrase, tuple(regions.split()), label)


# report order: devices, heart + mediastinum, lungs, pleura, bones, below the diaphragm, other, impression
TOPICS: tuple[Topic, ...] = (
    _t("aux-support_devices", "support devices", "mediastinum lungs heart abdomen", "Support Devices"),
    _t("organ-heart", "heart", "heart"),
    _t("disease-cardiomegaly", "cardiomegaly", "heart", "Cardiomegaly"),
    _t("organ-mediastinum", "mediastinum", "mediastinum"),
    _t("disease-enlarged_cardiomediastinum", "enlarged cardiomediastinum", "heart mediastinum",
       "Enlarged Cardiomediastinum"),
    _t("organ-lungs", "lungs", "lungs"),
    _t("disease-lung_opacity", "lung opacity", "lungs", "Lung Opacity"),
    _t("disease-lung_lesion", "lung lesion", "lungs", "Lung Lesion"),
    _t("disease-edema", "pulmonary edema", "lungs heart", "Edema"),
    _t("disease-consolidation", "consolidation", "lungs", "Consolidation"),
    _t("disease-pneumonia", "pneumonia", "lungs", "Pneumonia"),
    _t("disease-atelectasis", "atelectasis", "lungs diaphragm", "Atelectasis"),
    _t("organ-pleura", "pleura", "lungs diaphragm"),
    _t("disease-pleural_effusion", "pleural effusion", "lungs diaphragm", "Pleural Effusion"),
    _t("disease-pneumothorax", "pneumothorax", "lungs ribs", "Pneumothorax"),
    _t("disease-pleural_other", "pleural abnormality", "lungs ribs", "Pleural Other"),
    _t("organ-bones", "bones", "ribs vertebrae"),
    _t("disease-fracture", "fracture", "ribs vertebrae", "Fracture"),
    _t("organ-diaphragm", "diaphragm and upper abdomen", "diaphragm abdomen"),
    _t(FALLBACK, "other findings", " ".join(REGIONS)),
    _t("aux-impression", "overall impression", "lungs heart mediastinum"),
)
BY_NAME: dict[str, Topic] = {t.name: t for t in TOPICS}
BY_LABEL: dict[str, Topic] = {t.label: t for t in TOPICS if t.label}
ORDER: dict[str, int] = {t.name: i for i, t in enumerate(TOPICS)}


class Ontology:
    """Topics in order + region table; built from the module constants or from an asset's JSON."""

    def __init__(self, topics: tuple[Topic, ...] = TOPICS,
                 region_channels: Optional[dict[str, tuple[str, ...]]] = None, fallback: Optional[str] = FALLBACK):
        self.topics = tuple(topics)
        self.region_channels = {k: tuple(v) for k, v in (region_channels or REGION_CHANNELS).items()}
        self.fallback = fallback if any(t.name == fallback for t in self.topics) else None
        self.by_name = {t.name: t for t in self.topics}
        self.order = {t.name: i for i, t in enumerate(self.topics)}
        for t in self.topics:
            bad = [r for r in t.regions if r not in self.region_channels]
            if bad:
                raise ValueError(f"topic {t.name}: unknown region(s) {bad} (regions: {sorted(self.region_channels)})")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.topics]

    def channels(self, topic: str) -> list[str]:
        """Mask channels covering the topic's regions (in region-table order)."""
        return [c for r in self.by_name[topic].regions for c in self.region_channels[r]]

    def with_region_channels(self, override: dict[str, list[str]]) -> "Ontology":
        """The same topics, with the mask channels of some regions replaced (``model.options.region_channels``:
        a segmenter whose channels are named otherwise, e.g. CXAS's ``spine`` for ``vertebrae``)."""
        if not override:
            return self
        bad = sorted(set(override) - set(self.region_channels))
        if bad:
            raise ValueError(f"unknown region(s) {bad}; the regions are {sorted(self.region_channels)}")
        empty = sorted(r for r, chans in override.items() if not chans)
        if empty:
            raise ValueError(f"region(s) {empty} mapped to no mask channel")
        table = {**self.region_channels, **{r: tuple(c) for r, c in override.items()}}
        return Ontology(self.topics, table, self.fallback)

    def sort(self, rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda r: self.order[r["topic"]])

    def to_json(self) -> dict[str, Any]:
        return {"version": ONTOLOGY_VERSION, "regions": list(REGIONS), "fallback": self.fallback,
                "region_channels": {k: list(v) for k, v in self.region_channels.items()},
                "topics": [{**asdict(t), "regions": list(t.regions), "kind": t.kind} for t in self.topics]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Ontology":
        topics = tuple(Topic(d["name"], d["phrase"], tuple(d["regions"]), d.get("label")) for d in data["topics"])
        return cls(topics, {k: tuple(v) for k, v in data["region_channels"].items()}, data.get("fallback"))


def write_ontology_asset(shards_dir: str, ontology: Optional[Ontology] = None):
    """Publish the ontology as the ``topic_ontology`` dataset asset (reads no report)."""
    from shards.sidecars import write_asset

    onto = ontology or Ontology()
    return write_asset(shards_dir, ASSET_NAME, {ASSET_FILE: json.dumps(onto.to_json(), indent=1).encode()},
                       producer={"name": "rrg.topic_ontology"}, version=ONTOLOGY_VERSION, reads_splits=[])


def load_ontology(shards_dir: Optional[str] = None) -> Ontology:
    """The published asset of a shard set when there is one, else the built-in table."""
    if shards_dir:
        from shards.sidecars import load_assets

        assets = load_assets(shards_dir)
        if ASSET_NAME in assets:
            return Ontology.from_json(assets[ASSET_NAME].read_json(ASSET_FILE))
    return Ontology()
