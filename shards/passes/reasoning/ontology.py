"""The shipped chest X-ray ontology: organ -> conditions that can be found there, plus knowledge.

It is general medical knowledge written once here, never derived from any study: the
knowledge module of a reasoning chain is taken from it verbatim, so it cannot leak a
study's labels.  Each condition carries the words that make a report sentence describe it;
:func:`classify_sentence` maps one sentence to (organ, condition) with a small negation
rule (a negated or "normal" sentence describes the organ's ``normal`` condition).
"""
from __future__ import annotations

import re
from typing import Optional

# organ -> {"knowledge": str, "words": regex naming the organ, "conditions": {name: regex}}
# Conditions are checked in order (specific before generic); "normal" is implied for every organ.
ONTOLOGY: dict[str, dict] = {
    "lungs": {
        "knowledge": ("The lungs may show consolidation, atelectasis, pulmonary edema, focal opacities or "
                      "nodules; consolidation is airspace filling, atelectasis is volume loss with linear "
                      "opacity, edema is bilateral perihilar haziness."),
        "words": r"\b(lung|lungs|pulmonary|airspace|lobe|lingula|basilar|perihilar)\b",
        "conditions": {"edema": r"\bedema\b", "atelectasis": r"\batelecta\w*", "consolidation": r"\bconsolidat\w*",
                       "nodule": r"\b(nodule|nodular|mass)\b", "opacity": r"\bopacit\w*"},
    },
    "pleura": {
        "knowledge": ("The pleura may hold an effusion (blunting of the costophrenic angle, a meniscus) or a "
                      "pneumothorax (a visible visceral pleural edge without lung markings beyond it)."),
        "words": r"\b(pleura\w*|costophrenic)\b",
        "conditions": {"pneumothorax": r"\bpneumothora\w*", "effusion": r"\beffusions?\b",
                       "thickening": r"\bpleural thickening\b"},
    },
    "heart": {
        "knowledge": ("The heart may be enlarged (cardiomegaly, a cardiothoracic ratio above one half) or "
                      "normal in size; the cardiac silhouette is judged on a frontal view."),
        "words": r"\b(heart|cardiac|cardiomediastinal)\b",
        "conditions": {"cardiomegaly": r"\b(cardiomegaly|enlarge\w*)\b"},
    },
    "mediastinum": {
        "knowledge": ("The mediastinum may be widened or show abnormal contours; normal mediastinal "
                      "contours are smooth and of normal width."),
        "words": r"\b(mediastin\w*|hilar|hila)\b",
        "conditions": {"widening": r"\b(widen\w*|enlarged cardiomediastinum)\b"},
    },
    "bones": {
        "knowledge": ("The bones may show fractures (a cortical break, most often of a rib) or other osseous "
                      "abnormalities."),
        "words": r"\b(osseous|bone|bones|rib|ribs|skeletal)\b",
        "conditions": {"fracture": r"\bfracture\w*"},
    },
    "devices": {
        "knowledge": ("Support devices (endotracheal and enteric tubes, central catheters, monitoring leads) "
                      "are described by their tip position relative to the carina, the stomach or the cava."),
        "words": r"\b(tube|catheter|line|leads|pacemaker)\b",
        "conditions": {"support device": r"\b(tube|catheter|leads|pacemaker|line)\b"},
    },
}
NORMAL = "normal"
_NEG = re.compile(r"^(no|there is no|there are no|without)\b|\b(normal|clear|unremarkable|intact|sharp|"
                  r"not enlarged|within normal limits|no displaced)\b")
_COMPILED = {organ: (re.compile(o["words"]), {c: re.compile(rx) for c, rx in o["conditions"].items()})
             for organ, o in ONTOLOGY.items()}
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_SECTION = re.compile(r"\b(FINDINGS|IMPRESSION)\s*:\s*", re.IGNORECASE)


def organs() -> list[str]:
    return list(ONTOLOGY)


def conditions(organ: str) -> list[str]:
    """The organ's conditions, ``normal`` first."""
    return [NORMAL, *ONTOLOGY[organ]["conditions"]]


def classify_sentence(sentence: str) -> Optional[tuple[str, str]]:
    """(organ, condition) the sentence describes, or None when it names no organ of the ontology."""
    low = sentence.lower()
    negated = bool(_NEG.search(low))
    for organ, (words, conds) in _COMPILED.items():
        hit = next((c for c, rx in conds.items() if rx.search(low)), None)
        if hit is not None:
            return organ, (NORMAL if negated and organ != "devices" else hit)
    for organ, (words, _) in _COMPILED.items():
        if words.search(low):
            return organ, NORMAL
    return None


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SPLIT.split(text.strip()) if s.strip()]


def report_sections(report: str) -> tuple[str, str]:
    """(findings, impression) of a report; a report without headers is all findings."""
    parts = _SECTION.split(report)
    if len(parts) < 3:
        return report.strip(), ""
    found = {parts[i].upper(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    return found.get("FINDINGS", ""), found.get("IMPRESSION", "")


def organ_sentences(report: str) -> dict[str, list[tuple[str, str]]]:
    """organ -> [(condition, sentence)] over the findings section, in ontology order."""
    findings, _ = report_sections(report)
    out: dict[str, list[tuple[str, str]]] = {}
    for sent in split_sentences(findings):
        hit = classify_sentence(sent)
        if hit is not None:
            out.setdefault(hit[0], []).append((hit[1], sent))
    return {o: out[o] for o in ONTOLOGY if o in out}
