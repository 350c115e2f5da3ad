"""ReXrank's prediction JSON: ``rrg generate --format rexrank`` writes it, ``rrg eval --predictions`` reads it.

The layout (rajpurkarlab/ReXrank ``example_files/prediction.json``, ``merversa_inference.py`` and
``evaluation_script.md``) is one JSON object keyed by study id; each value is the study's entry of the
test-set JSON (image paths, ``findings``/``impression`` or ``section_findings``/``section_impression``,
``context`` ...) with the model's report added as ``model_prediction``::

    {"50051329": {"image_path": [...], "section_findings": "...", "section_impression": "...",
                  "model_prediction": "Findings: ... Impression: ..."}, ...}

ReXrank's scorer compares ``model_prediction`` with ``f"Findings: {findings} Impression: {impression}"``
(a missing section prints as ``None``, as its ``split_json`` does); :func:`read_rexrank` builds the
same reference.  A study without ``model_prediction`` or without both section keys is an error naming it.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from shards.labeling.registry import LabelInputError

SECTION_KEYS = (("section_findings", "section_impression"), ("findings", "impression"))


def is_rexrank_file(path: str) -> bool:
    """True when the file is one JSON object (ReXrank) rather than JSON lines."""
    with open(path, encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
    if not head.startswith("{"):
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except ValueError:
        return False  # JSON lines: more than one object
    return isinstance(obj, dict) and all(isinstance(v, dict) for v in obj.values())


def reference_of(study: str, entry: dict, path: str) -> str:
    for fk, ik in SECTION_KEYS:
        if fk in entry or ik in entry:
            f, i = entry.get(fk), entry.get(ik)
            return f"Findings: {f} Impression: {i}"
    raise LabelInputError(f"{path}: study {study}: no reference (expected section_findings/section_impression or "
                          f"findings/impression)")


def read_rexrank(path: str) -> list[dict]:
    """Records {id, reference, generated} of a ReXrank prediction JSON (sorted by study id)."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError) as err:
        raise LabelInputError(f"{path}: not a ReXrank prediction JSON ({err})") from None
    if not isinstance(obj, dict) or not obj:
        raise LabelInputError(f"{path}: expected a non-empty JSON object keyed by study id")
    out = []
    for study in sorted(obj):
        entry = obj[study]
        if not isinstance(entry, dict):
            raise LabelInputError(f"{path}: study {study}: expected an object, got {type(entry).__name__}")
        pred = entry.get("model_prediction")
        if not isinstance(pred, str):
            raise LabelInputError(f"{path}: study {study}: 'model_prediction' is "
                                  f"{'missing' if pred is None else type(pred).__name__}, expected a string")
        out.append({"id": study, "reference": reference_of(study, entry, path), "generated": pred})
    return out


def write_rexrank(rows: list[dict], path: str, input_json: Optional[str] = None) -> dict:
    """Write rows {id, generated, files} as a ReXrank prediction JSON; with ``input_json`` (the ReXrank
    test-set JSON) every study's input entry is kept and ``model_prediction`` added, as the example does."""
    base: dict = {}
    if input_json:
        with open(input_json, encoding="utf-8") as fh:
            base = json.load(fh)
        if not isinstance(base, dict):
            raise LabelInputError(f"{input_json}: expected the ReXrank test-set JSON object keyed by study id")
    out = {}
    for row in rows:
        entry = dict(base.get(str(row["id"]), {})) if base else {"image_path": row.get("files", [])}
        entry["model_prediction"] = row["generated"]
        out[str(row["id"])] = entry
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)
    return out
