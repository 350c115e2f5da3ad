"""Offline rule-based CheXpert-14 report labeler (no weights, no network).

Pipeline, after the CheXpert labeler's design (written afresh here):

1. **Sentences**: lower-case, drop section headers, split on ``.``/``;``/list
   numbers (decimals such as ``4.5`` stay whole).
2. **Mentions**: per-observation phrase lists with synonyms (``_MENTIONS``);
   "heart size is normal", "normal heart size", "cardiac silhouette is within
   normal limits" and the like are explicit *negative* mentions of Cardiomegaly
   (likewise a normal/unremarkable cardiomediastinal silhouette or mediastinum
   for Enlarged Cardiomediastinum).
3. **Negation / uncertainty**: a trigger before a mention (``no``, ``without``,
   ``free of``, ``negative for``, ``no evidence of``, ``rather than``,
   ``removal of`` / ``may``, ``possible``, ``likely``, ``suggest``,
   ``concerning for``, ``cannot exclude``, ``versus`` ...) or after it
   (``has resolved``, ``is not seen`` / ``cannot be excluded``, ``is likely``)
   decides the mention.  The nearest preceding trigger wins; a trigger after
   the mention overrides.  Scope ends at ``but``/``however``/``which``/...
   and at a comma that starts a new phrase (``no effusion, small
   pneumothorax``) but runs through a list (``no effusion, consolidation, or
   pneumothorax``).
4. **Aggregation** over the report per observation: positive (1) beats
   uncertain (-1) beats negative (0); never mentioned -> blank (None).
5. **No Finding** = 1 when none of the 12 pathologies (everything but No
   Finding and Support Devices; Fracture and Pleural Other count) is positive
   or uncertain, else blank -- as the CheXpert labeler does (it never emits 0).

Documented decisions: "lungs are clear" is *not* a mention (the CheXpert
labeler leaves opacity-type labels blank for it); old/healed fractures are
Fracture 1 (the CheXpert labeler does not grade age); an empty report gets all
blanks.
"""
from __future__ import annotations

import csv
import json
import os
import re
from typing import Optional

from configs.schema import Registry
from configs.labelsets import CHEXPERT_LABELS

Labels = dict[str, Optional[float]]
LABELERS: Registry = Registry("report labeler")

_M = {
    "Enlarged Cardiomediastinum": [
        r"(?:mediastinal|mediastinum) (?:is )?widen\w*", r"widen\w* (?:of the )?mediastinum",
        r"enlarge\w* (?:of the )?cardiomediastin\w*(?: silhouette)?",
        r"cardiomediastinal (?:silhouette|contours?) (?:\w+ ){0,3}(?:enlarged|widened)",
        r"mediastin\w* (?:enlargement|widening)"],
    "Cardiomegaly": [
        r"cardiomegaly", r"(?:enlarge\w*|large) (?:cardiac silhouette|heart)", r"cardiac enlargement",
        r"(?:heart|cardiac silhouette|cardiac size|heart size)(?: size)? (?:\w+ ){0,3}(?:enlarged|large|increased)"],
    "Lung Lesion": [r"nodul\w*", r"mass(?:es)?\b", r"lesions?", r"tumou?rs?", r"neoplas\w*", r"metasta\w*",
                    r"carcinoma", r"malignan\w*"],
    "Lung Opacity": [r"opaci\w*", r"infiltrat\w*", r"densit(?:y|ies)", r"haziness", r"hazy",
                     r"air ?-?space (?:disease|process|opacit\w*)", r"ground ?-?glass"],
    "Edema": [r"edema", r"(?:vascular|pulmonary|venous|hilar) congestion", r"cephalization",
              r"congestive heart failure", r"\bchf\b", r"pulmonary venous (?:hypertension|engorgement)"],
    "Consolidation": [r"consolidat\w*"],
    "Pneumonia": [r"pneumoni\w*", r"infectio\w*", r"infectious process"],
    "Atelectasis": [r"atelecta\w*", r"collapse"],
    "Pneumothorax": [r"pneumothora\w*", r"\bptx\b"],
    "Pleural Effusion": [r"(?<!pericardial )effusions?", r"pleural fluid", r"hydropneumothorax",
                         r"blunting of (?:the )?(?:\w+ )?costophrenic", r"costophrenic angles? (?:is |are )?blunt\w*"],
    "Pleural Other": [r"pleural (?:thickening|plaques?|scar\w*|calcificat\w*)", r"fibrothorax",
                      r"apical (?:pleural )?(?:scar\w*|cap|thickening)", r"\bscarring"],
    "Fracture": [r"fractur\w*", r"\bfx\b"],
    "Support Devices": [
        r"(?<!septal )(?<!kerley b )(?<!kerley )\blines?\b", r"tubes?\b", r"catheters?", r"pacemakers?", r"pacer",
        r"\bleads\b", r"wires?\b", r"clips?\b", r"valves?\b", r"\bports?\b", r"port-a-cath", r"\bpicc\b", r"drains?\b",
        r"\bstents?\b", r"swan[- ]?ganz", r"\ba?icd\b", r"defibrillator", r"hardware", r"prosthe\w*", r"tracheostomy",
        r"\btrach\b", r"sternotomy", r"devices?\b", r"coils?\b"],
}
_MENTIONS = {obs: re.compile("|".join(rf"(?:{p})" for p in ps)) for obs, ps in _M.items()}
_NORMAL = {
    "Cardiomegaly": re.compile(
        r"(?:heart|cardiac)(?: size| silhouette| contours?)? (?:\w+ ){0,3}(?:normal|within normal limits|"
        r"unremarkable|upper limits of normal|top[- ]normal)|(?:normal|top[- ]normal) (?:heart|cardiac)"),
    "Enlarged Cardiomediastinum": re.compile(
        r"(?:cardiomediastinal|mediastinal|mediastinum)(?: silhouette| contours?)? (?:\w+ ){0,3}"
        r"(?:normal|within normal limits|unremarkable)|normal (?:cardio)?mediastin"),
}

_NEG_PRE = re.compile(r"\b(?:no|not|without|free of|clear of|negative for|absence of|resolution of|"
                      r"removal of|rather than|nor|no longer)\b")
_UNC_PRE = re.compile(r"\b(?:may|might|possibl[ey]|probabl[ey]|likely|suggest\w*|could|would|concern\w* for|"
                      r"suspicious for|suspect\w*|questionabl[ey]|question of|cannot (?:be )?exclude\w*|"
                      r"can ?not (?:be )?exclude\w*|cannot rule out|can't (?:be )?exclude\w*|versus|vs\b|"
                      r"differential|borderline|indeterminate|equivocal|r/o|rule out|not excluded)")
_NEG_POST = re.compile(r"^(?:\s*(?:is|are|has|have|has been|have been|was|were))?\s*(?:not (?:seen|identified|"
                       r"present|visualized|appreciated|evident|demonstrated)|resolved|absent|removed|"
                       r"no longer (?:seen|present|visualized))")
_UNC_POST = re.compile(r"^(?:\s*(?:is|are))?\s*(?:(?:cannot|can ?not|can't) (?:be )?(?:excluded|ruled out)|"
                       r"not (?:be )?(?:excluded|ruled out)|versus|vs\b)|^\s*(?:is|are) (?:possible|likely|"
                       r"suspected|questioned)")
_BREAK = re.compile(r"\b(?:but|however|although|though|which|whereas|except|aside from|apart from|otherwise|"
                    r"while)\b|,\s*(?:and |or )?(?:there|the|a|an|small|large|mild|moderate|severe|new|increas\w*|"
                    r"decreas\w*|persist\w*|stable|unchanged|residual|minimal|trace|tiny|bilateral|left|right|"
                    r"likely|possibl\w*|probabl\w*|may|consistent|with|is|are|has|have)\b")
_HEADER = re.compile(r"\b(?:findings|impression|history|indication|comparison|technique|conclusion)\s*:")


def sentences(report: str) -> list[str]:
    text = _HEADER.sub(". ", report.lower().replace("\n", " "))
    text = re.sub(r"(?:^|\s)\d+[.)]\s", ". ", text)  # numbered lists
    return [s.strip() for s in re.split(r"(?<!\d)\.(?!\d)|;|\?", text) if s.strip()]


def _mention_value(sent: str, start: int, end: int) -> float:
    after = sent[end:]
    if _UNC_POST.match(after):
        return -1.0
    if _NEG_POST.match(after):
        return 0.0
    best: tuple[int, float] = (-1, 1.0)
    spans = [(m, -1.0) for m in _UNC_PRE.finditer(sent, 0, end)]
    unc_ranges = [(m.start(), m.end()) for m, _ in spans]
    spans += [(m, 0.0) for m in _NEG_PRE.finditer(sent, 0, end)
              if not any(a <= m.start() < b for a, b in unc_ranges)]
    for m, value in spans:
        gap = sent[m.end():start] if m.end() <= start else ""
        if _BREAK.search(gap):
            continue
        if m.start() > best[0]:
            best = (m.start(), value)
    return best[1]


def label_sentence_mentions(sent: str) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for obs, rx in _NORMAL.items():
        if rx.search(sent):
            found.setdefault(obs, []).append(0.0)
    for obs, rx in _MENTIONS.items():
        if obs in found:
            continue
        for m in rx.finditer(sent):
            found.setdefault(obs, []).append(_mention_value(sent, m.start(), m.end()))
    if "hydropneumothorax" in sent:
        found.setdefault("Pneumothorax", []).append(_mention_value(sent, sent.index("hydro"), sent.index("hydro") + 17))
    return found


def label_report(report: str) -> Labels:
    """CheXpert-14 labels of one report: 1.0 / 0.0 / -1.0 / None (not mentioned)."""
    labels: Labels = {name: None for name in CHEXPERT_LABELS}
    if not report or not report.strip():
        return labels
    for sent in sentences(report):
        for obs, values in label_sentence_mentions(sent).items():
            for v in values:
                cur = labels[obs]
                rank = {1.0: 3, -1.0: 2, 0.0: 1, None: 0}
                if rank[v] > rank[cur]:
                    labels[obs] = v
    pathologies = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    if all(labels[n] not in (1.0, -1.0) for n in pathologies):
        labels["No Finding"] = 1.0
    return labels


@LABELERS.register("rrg")
class RuleLabeler:
    """The rule-based labeler above; ``__call__(reports) -> list of label dicts``."""

    def __call__(self, reports: list[str]) -> list[Labels]:
        return [label_report(r) for r in reports]


@LABELERS.register("chexbert")
class CheXbertLabeler:
    """A local CheXbert-style checkpoint: a Hugging Face sequence classifier directory whose
    ``config.id2label`` names ``<Observation>:<value>`` heads is not standardised, so this
    wrapper only loads a directory and expects 14 heads with 4 classes (blank, 1, 0, -1)."""

    def __init__(self, path: str):
        if not path or not os.path.isdir(path):
            raise FileNotFoundError(f"CheXbert checkpoint directory not found: {path!r} (no download is attempted)")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def __call__(self, reports: list[str]) -> list[Labels]:
        import torch

        values = [None, 1.0, 0.0, -1.0]
        with torch.no_grad():
            enc = self.tokenizer(reports, padding=True, truncation=True, return_tensors="pt")
            logits = self.model(**enc).logits.view(len(reports), len(CHEXPERT_LABELS), 4)
        return [{n: values[int(c)] for n, c in zip(CHEXPERT_LABELS, row)} for row in logits.argmax(-1)]


def read_reports(path: str) -> list[str]:
    """JSONL with a ``report`` field, or plain text with one report per line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                out.append(str(json.loads(line)["report"]))
            else:
                out.append(line)
    return out


def label_file(path: str, out_csv: str) -> None:
    """``rrg label``: CSV with ``Reports`` + the 14 labels (1.0/0.0/-1.0/empty), CheXpert-labeler style."""
    reports = read_reports(path)
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Reports"] + CHEXPERT_LABELS)
        for rep, lab in zip(reports, RuleLabeler()(reports)):
            w.writerow([rep] + ["" if lab[n] is None else f"{lab[n]:.1f}" for n in CHEXPERT_LABELS])
