"""Report grammar for the phantom studies, and the CheXpert labels of what it writes.

Each sentence is produced together with the CheXpert *mentions* a rule-based
labeler (stanfordmlgroup/chexpert-labeler phrase lists + NegBio-style negation
and uncertainty) reads in it, e.g. "Possible small left pleural effusion." ->
[("Pleural Effusion", -1.0)]. Labels are then aggregated over the whole report
with the labeler's rules: {0, -1} -> -1, {0, 1} -> 1, {-1, 1} -> 1; "No Finding"
is 1.0 only when no non-support-device mention is positive or uncertain
(phrases like "blunting" or "volume loss" count as findings), otherwise blank.

Phrasing rules kept on purpose (they follow the labeler's phrase lists):
- every positive consolidation/atelectasis/edema sentence also states an
  "opacity", so Lung Opacity = 1 by text, matching the CheXpert hierarchy;
- hedges use subject-verb forms ("Linear opacity ... may represent atelectasis")
  so the opacity stays positive and only the diagnosis is uncertain;
- no "pleural line", "contour" outside mediastinal sentences, "vascular
  congestion" or positive "X or Y" (the labeler reads those as devices,
  cardiomediastinum, or uncertainty).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from configs.labelsets import CHEXPERT_LABELS

Mentions = list[tuple[str, float]]
Sentence = tuple[str, str, Mentions]  # (text, topic, mentions)
FINDING_MENTION = "_finding"  # a no_finding-list phrase ("blunting", "volume loss"): not a label, blocks No Finding
MIN_WORDS, MAX_WORDS = 25, 70

LOBES = {("right", "upper"): "right upper lobe", ("right", "mid"): "right middle lobe",
         ("right", "lower"): "right lower lobe", ("left", "upper"): "left upper lobe",
         ("left", "mid"): "lingula", ("left", "lower"): "left lower lobe"}
ADVERB = {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


# --------------------------------------------------------------------------- findings section
def _heart(f: dict, rng) -> list[Sentence]:
    cm = f.get("cardiomegaly")
    if cm:
        sev = cm["severity"]
        text = _pick(rng, [f"The heart is {ADVERB[sev]} enlarged.", f"{_cap(sev)} cardiomegaly.",
                           f"There is {sev} enlargement of the cardiac silhouette.",
                           f"The cardiac silhouette is {ADVERB[sev]} enlarged."])
        out = [(text, "heart", [("Cardiomegaly", 1.0)])]
        if rng.random() < 0.6:
            out.append((_pick(rng, ["The mediastinal contours are normal.", "Mediastinal contours are unremarkable."]),
                        "mediastinum", [("Enlarged Cardiomediastinum", 0.0)]))
        return out
    r = rng.random()
    if r < 0.35:
        return [(_pick(rng, ["Heart size and mediastinal contours are normal.",
                             "Heart size and mediastinal contours are within normal limits."]),
                 "heart", [("Cardiomegaly", 0.0), ("Enlarged Cardiomediastinum", 0.0)])]
    if r < 0.6:
        return [(_pick(rng, ["The cardiomediastinal silhouette is within normal limits.",
                             "The cardiomediastinal silhouette is normal.", "Normal cardiomediastinal silhouette."]),
                 "heart", [("Enlarged Cardiomediastinum", 0.0)])]
    out = [(_pick(rng, ["Heart size is normal.", "The heart is normal in size.", "Normal heart size.",
                        "The cardiac silhouette is not enlarged."]), "heart", [("Cardiomegaly", 0.0)])]
    if rng.random() < 0.5:
        out.append((_pick(rng, ["The mediastinal contours are normal.", "The mediastinum is unremarkable."]),
                    "mediastinum", [("Enlarged Cardiomediastinum", 0.0)]))
    return out


def _lungs(f: dict, rng) -> list[Sentence]:
    out: list[Sentence] = []
    cons, atel, edema = f.get("consolidation"), f.get("atelectasis"), f.get("edema")
    if edema:
        sev = edema["severity"]
        if edema["uncertain"]:
            text = _pick(rng, [f"Hazy bilateral perihilar opacities may represent {sev} pulmonary edema.",
                               f"{_cap(sev)} bilateral perihilar opacities may reflect early pulmonary edema."])
            out.append((text, "lungs", [("Lung Opacity", 1.0), ("Edema", -1.0)]))
        else:
            text = _pick(rng, [f"{_cap(sev)} pulmonary edema with bilateral perihilar opacities.",
                               f"Bilateral perihilar hazy opacities consistent with {sev} pulmonary edema.",
                               f"There are bilateral perihilar airspace opacities in a bat-wing distribution, consistent with {sev} pulmonary edema."])
            out.append((text, "lungs", [("Lung Opacity", 1.0), ("Edema", 1.0)]))
    if cons:
        loc = LOBES[(cons["side"], cons["zone"])]
        if cons["uncertain"]:
            text = _pick(rng, [f"Patchy opacity in the {loc} may represent consolidation.",
                               f"Ill-defined opacity in the {loc} may reflect early consolidation."])
            out.append((text, "lungs", [("Lung Opacity", 1.0), ("Consolidation", -1.0)]))
        else:
            text = _pick(rng, [f"There is a focal opacity in the {loc}, consistent with consolidation.",
                               f"Dense consolidative opacity in the {loc}.",
                               f"Focal airspace opacity in the {loc} consistent with consolidation."])
            out.append((text, "lungs", [("Lung Opacity", 1.0), ("Consolidation", 1.0)]))
    if atel:
        side = atel["side"]
        if atel["uncertain"]:
            text = _pick(rng, [f"Linear opacity at the {side} lung base may represent atelectasis.",
                               f"Streaky {side} basilar opacity may reflect atelectasis."])
            out.append((text, "lungs", [("Lung Opacity", 1.0), ("Atelectasis", -1.0)]))
        else:
            opts = [(f"Linear opacity at the {side} lung base, consistent with atelectasis.", False),
                    (f"Plate-like atelectatic opacity at the {side} base with mild volume loss.", True),
                    (f"Subsegmental atelectasis at the {side} lung base with adjacent linear opacity.", False)]
            text, vol = opts[int(rng.integers(len(opts)))]
            ments = [("Lung Opacity", 1.0), ("Atelectasis", 1.0)] + ([(FINDING_MENTION, 1.0)] if vol else [])
            out.append((text, "lungs", ments))
    if not out:
        r = rng.random()
        if r < 0.3:
            out.append((_pick(rng, ["The lungs are clear.", "The lungs are well expanded and clear.", "Lungs are clear bilaterally."]), "lungs", []))
            if rng.random() < 0.5:
                out.append(("No focal consolidation.", "lungs", [("Consolidation", 0.0)]))
        elif r < 0.55:
            out.append(("The lungs are clear without focal consolidation.", "lungs", [("Consolidation", 0.0)]))
        elif r < 0.8:
            out.append((_pick(rng, ["No focal consolidation or pulmonary edema.", "There is no focal consolidation or pulmonary edema."]),
                        "lungs", [("Consolidation", 0.0), ("Edema", 0.0)]))
        else:
            out.append(("No focal airspace opacity.", "lungs", [("Lung Opacity", 0.0)]))
            if rng.random() < 0.5:
                out.append(("There is no pulmonary edema.", "lungs", [("Edema", 0.0)]))
        return out
    if not cons and rng.random() < 0.5:
        out.append(("No focal consolidation.", "lungs", [("Consolidation", 0.0)]))
    if not edema and rng.random() < 0.4:
        out.append((_pick(rng, ["No pulmonary edema.", "There is no pulmonary edema."]), "lungs", [("Edema", 0.0)]))
    return out


def _side_phrase(sides: list[str]) -> str:
    return "bilateral" if len(sides) == 2 else sides[0]


def _pleura(f: dict, rng) -> list[Sentence]:
    eff, ptx = f.get("pleural_effusion"), f.get("pneumothorax")
    out: list[Sentence] = []
    if ptx:
        side, size = ptx["side"], ptx["size"]
        if ptx["uncertain"]:
            text = _pick(rng, [f"Possible tiny {side} apical pneumothorax.", f"A small {side} apical pneumothorax is suspected."])
            out.append((text, "pleura", [("Pneumothorax", -1.0)]))
        else:
            text = _pick(rng, [f"{_cap(size)} {side} apical pneumothorax.", f"There is a {size} {side} pneumothorax.",
                               f"{_cap(size)} {side} pneumothorax with a visible visceral pleural edge."])
            out.append((text, "pleura", [("Pneumothorax", 1.0)]))
    if eff:
        sides = sorted(eff["sizes"])
        if eff["uncertain"]:
            side = sides[0]
            text, ments = _pick(rng, [f"Possible small {side} pleural effusion.", f"Blunting of the {side} costophrenic angle may represent a small effusion."]), [("Pleural Effusion", -1.0)]
            if text.startswith("Blunting"):
                ments.append((FINDING_MENTION, 1.0))
            out.append((text, "pleura", ments))
        elif len(sides) == 2:
            a, b = eff["sizes"]["left"], eff["sizes"]["right"]
            if a == b:
                text = _pick(rng, [f"{_cap(a)} bilateral pleural effusions.", f"There are {a} bilateral pleural effusions."])
            else:
                big = "left" if eff["levels"]["left"] > eff["levels"]["right"] else "right"
                text = f"Bilateral pleural effusions, larger on the {big}."
            out.append((text, "pleura", [("Pleural Effusion", 1.0)]))
        else:
            side, size = sides[0], eff["sizes"][sides[0]]
            text = _pick(rng, [f"{_cap(size)} {side} pleural effusion.", f"There is a {size} {side} pleural effusion.",
                               f"{_cap(size)} {side} pleural effusion with blunting of the costophrenic angle."])
            ments = [("Pleural Effusion", 1.0)] + ([(FINDING_MENTION, 1.0)] if "blunting" in text else [])
            out.append((text, "pleura", ments))
    if not eff and not ptx:
        r = rng.random()
        if r < 0.75:
            return [(_pick(rng, ["No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
                                 "No pneumothorax or pleural effusion.", "No effusion or pneumothorax."]),
                     "pleura", [("Pleural Effusion", 0.0), ("Pneumothorax", 0.0)])]
        return [("The costophrenic angles are sharp.", "pleura", []), ("No pneumothorax.", "pleura", [("Pneumothorax", 0.0)])]
    if not ptx and rng.random() < 0.8:
        out.append((_pick(rng, ["No pneumothorax.", "There is no pneumothorax."]), "pleura", [("Pneumothorax", 0.0)]))
    if not eff and rng.random() < 0.7:
        out.append((_pick(rng, ["No pleural effusion.", "No significant pleural effusion."]), "pleura", [("Pleural Effusion", 0.0)]))
    return out


def _devices(f: dict, rng) -> list[Sentence]:
    dev = f.get("support_devices")
    if not dev:
        return []
    sd = [("Support Devices", 1.0)]
    out: list[Sentence] = []
    if "ett" in dev["devices"]:
        cm = dev["ett_carina_cm"]
        out.append((_pick(rng, [f"An endotracheal tube terminates {cm} cm above the carina.",
                                f"Endotracheal tube tip is {cm} cm above the carina."]), "devices", sd))
    if "cvc" in dev["devices"]:
        out.append((_pick(rng, ["A right internal jugular central venous catheter terminates in the mid SVC.",
                                "Right internal jugular catheter tip projects over the superior vena cava."]), "devices", sd))
    if "ngt" in dev["devices"]:
        out.append((_pick(rng, ["An enteric tube courses below the diaphragm with the tip in the stomach.",
                                "Nasogastric tube tip is in the stomach."]), "devices", sd))
    if dev.get("ecg"):
        out.append(("Cardiac monitoring leads overlie the chest.", "devices", []))
    return out


def _bones(rng) -> list[Sentence]:
    if rng.random() < 0.25:
        return [("No displaced rib fracture.", "bones", [("Fracture", 0.0)])]
    return [(_pick(rng, ["No acute osseous abnormality.", "The visualized osseous structures are unremarkable.",
                         "Osseous structures are intact."]), "bones", [])]


# --------------------------------------------------------------------------- impression
def _impression(f: dict, rng) -> list[Sentence]:
    imp: list[Sentence] = []
    ptx, eff, edema, cons, cm, atel = (f.get(k) for k in ("pneumothorax", "pleural_effusion", "edema", "consolidation", "cardiomegaly", "atelectasis"))
    if ptx:
        imp.append((f"Possible small {ptx['side']} apical pneumothorax." if ptx["uncertain"] else f"{_cap(ptx['size'])} {ptx['side']} pneumothorax.",
                    "impression", [("Pneumothorax", -1.0 if ptx["uncertain"] else 1.0)]))
    if edema and not edema["uncertain"]:
        imp.append((_pick(rng, [f"{_cap(edema['severity'])} pulmonary edema.", "Findings consistent with pulmonary edema."]), "impression", [("Edema", 1.0)]))
    if eff and not eff["uncertain"]:
        imp.append((f"{_cap(_side_phrase(sorted(eff['sizes'])))} pleural effusion{'s' if len(eff['sizes']) == 2 else ''}.", "impression", [("Pleural Effusion", 1.0)]))
    if cons:
        loc = LOBES[(cons["side"], cons["zone"])].replace("lingula", "lingular")  # adjective before "consolidation"
        if cons["uncertain"]:
            imp.append((f"Possible {loc} consolidation.", "impression", [("Consolidation", -1.0)]))
        elif rng.random() < 0.4:
            imp.append((f"{_cap(loc)} consolidation, concerning for pneumonia.", "impression", [("Consolidation", 1.0), ("Pneumonia", -1.0)]))
        else:
            imp.append((f"{_cap(loc)} consolidation.", "impression", [("Consolidation", 1.0)]))
    if cm and rng.random() < 0.7:
        imp.append((_pick(rng, ["Cardiomegaly.", f"{_cap(cm['severity'])} cardiomegaly.", "Enlarged cardiac silhouette."]), "impression", [("Cardiomegaly", 1.0)]))
    if atel and not atel["uncertain"] and (rng.random() < 0.5 or not imp):
        imp.append((f"{_cap(atel['side'])} basilar atelectasis.", "impression", [("Atelectasis", 1.0)]))
    if not imp and any(f.get(k) for k in ("pneumothorax", "pleural_effusion", "edema", "atelectasis")):
        imp.append(("Findings as above.", "impression", []))  # only hedged findings: defer to the body
    if not imp:
        normals = ["No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.", "No acute intrathoracic process."]
        imp.append((_pick(rng, normals + ([] if f.get("support_devices") else ["Normal chest radiograph."])), "impression", []))
    return imp[:3]


# --------------------------------------------------------------------------- assembly + labels
ORDERS = [("devices", "heart", "lungs", "pleura", "bones"), ("devices", "lungs", "pleura", "heart", "bones"),
          ("heart", "lungs", "pleura", "devices", "bones"), ("lungs", "pleura", "heart", "devices", "bones")]


def aggregate_labels(sentences: list[Sentence]) -> dict[str, Optional[float]]:
    """CheXpert aggregation over all mentions in the report (see module docstring)."""
    seen: dict[str, list[float]] = {}
    finding = False
    for _, _, mentions in sentences:
        for label, value in mentions:
            if label != "Support Devices" and value in (1.0, -1.0):
                finding = True
            if label != FINDING_MENTION:
                seen.setdefault(label, []).append(value)
    labels: dict[str, Optional[float]] = {k: None for k in CHEXPERT_LABELS}
    for label, values in seen.items():
        labels[label] = 1.0 if 1.0 in values else (-1.0 if -1.0 in values else 0.0)
    labels["No Finding"] = None if finding else 1.0
    return labels


def write_report(findings: dict[str, Any], rng: np.random.Generator) -> tuple[str, str, list[dict[str, str]], dict[str, Optional[float]]]:
    """(findings text, impression text, topics, labels) for a ground-truth findings dict."""
    parts = {"devices": _devices(findings, rng), "heart": _heart(findings, rng), "lungs": _lungs(findings, rng),
             "pleura": _pleura(findings, rng), "bones": _bones(rng) if rng.random() < 0.55 else []}
    body = [s for key in ORDERS[int(rng.integers(len(ORDERS)))] for s in parts[key]]
    imp = _impression(findings, rng)
    words = lambda: sum(len(t.split()) for t, _, _ in body + imp)  # noqa: E731
    if words() < MIN_WORDS and not parts["bones"]:
        body.append(_bones(rng)[0])
    # long multi-finding reports: drop purely negative/neutral body sentences, then trim the impression
    while words() > MAX_WORDS and any(_droppable(x) for x in body):
        idx = max(i for i, x in enumerate(body) if _droppable(x))
        body = body[:idx] + body[idx + 1:]
    while words() > MAX_WORDS and len(imp) > 1:
        imp = imp[:-1]
    sentences = body + imp
    topics = [{"text": t, "topic": topic} for t, topic, _ in sentences]
    return " ".join(t for t, _, _ in body), " ".join(t for t, _, _ in imp), topics, aggregate_labels(sentences)


def _droppable(sentence: Sentence) -> bool:
    """A body sentence stating no positive or uncertain finding (a negative, a normal, leads)."""
    return all(value == 0.0 for _, value in sentence[2])
