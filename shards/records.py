"""What a study is, in memory and inside a shard.

Adapters yield :class:`Study` objects; the shard writer packs each into one
WebDataset sample (one tar key per study); the reader's decode stage turns
that sample back into a :class:`DecodedSample`.

Members of one sample (``<key>.<ext>`` in the tar)::

    <key>.json            study record: ids, split, report, labels, topics, views, masks meta
    <key>.view0.png       first view (or .jpg), pre-resized at build time
    <key>.view1.png       second view, when the study has one
    <key>.masks.bin       zlib(np.packbits(bool masks (C, H, W))), see shards/masks.py
    <key>.kg.safetensors  knowledge-graph subgraph tensors, when the source has them
    <key>.<name>.safetensors  named per-study tensors (Study.tensors), e.g. soft masks as uint8

Sidecars (shards/sidecars.py) add members of the same forms later, aligned by key.

Nothing in a shard is a pickle: tensors are safetensors or raw bit-packed bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from configs.labelsets import CHEXPERT_5, CHEXPERT_LABELS  # noqa: F401 (re-exported)
# label values: 1.0 positive, 0.0 negative, -1.0 uncertain, None not mentioned (blank)

SPLITS = ("train", "validate", "test")
FORMAT_VERSION = 1


@dataclass
class View:
    """One image of a study: an in-memory array or a file path (read by the writer)."""

    image: Optional[np.ndarray] = None  # (H, W) or (H, W, 3); uint8 or uint16
    path: Optional[str] = None
    position: str = "PA"  # PA | AP | LATERAL | ...


@dataclass
class Study:
    study_id: str
    patient_id: str
    split: Optional[str]  # None: the writer assigns one by patient
    views: list[View]
    findings: str = ""
    impression: str = ""
    labels: dict[str, Optional[float]] = field(default_factory=dict)  # keys of the label set below
    label_set: str = "chexpert"  # configs.labelsets name: chexpert (14) or padchest
    topics: list[dict[str, str]] = field(default_factory=list)  # [{"text": sentence, "topic": name}]
    masks: Optional[np.ndarray] = None  # bool (C, H, W), aligned with views[0]
    mask_channels: list[str] = field(default_factory=list)
    mask_paths: dict[str, str] = field(default_factory=dict)  # channel -> image file (adapter alternative)
    kg: Optional[dict[str, np.ndarray]] = None  # node_ids, edge_index (2, E), edge_type (E,), node_feat (N, D)
    # named per-study tensors, one safetensors member each (e.g. soft masks quantised to uint8)
    tensors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> str:
        parts = []
        if self.findings:
            parts.append(f"FINDINGS: {self.findings}")
        if self.impression:
            parts.append(f"IMPRESSION: {self.impression}")
        return "\n".join(parts)


@dataclass
class DecodedSample:
    """A shard sample after the reader's decode stage (input of a family's sample builder)."""

    key: str
    shard: str
    record: dict[str, Any]  # the .json member
    images: list[np.ndarray]  # uint8 (H, W) or (H, W, 3), one per view
    masks: Optional[np.ndarray] = None  # bool (C, H, W)
    mask_channels: list[str] = field(default_factory=list)
    kg: Optional[dict[str, np.ndarray]] = None
    tensors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # <name>.safetensors members
    annotations: dict[str, Any] = field(default_factory=dict)  # <name>.json members (overlays), parsed

    @property
    def report(self) -> str:
        return self.record["report"]["text"]

    @property
    def label_set(self) -> str:
        return self.record.get("label_set", "chexpert")


def report_text(findings: str, impression: str) -> str:
    return Study("", "", None, [], findings=findings, impression=impression).report
