"""Spanish report grammar for the phantom studies, in PadChest's style, with PadChest main labels.

PadChest reports are short Spanish free text ("Cardiomegalia. Derrame pleural izquierdo.
Sin otros hallazgos."), negatives as "sin ..." / "no se observa ...", hedges as "posible"
or "no se descarta".  The labels are the ground truth of the drawn findings on
:data:`configs.labelsets.PADCHEST_LABELS` (1.0 present, -1.0 hedged in the text, 0.0 stated
absent, None not mentioned), so a Spanish demo run is scored on PadChest's label set.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from configs.labelsets import PADCHEST_LABELS

LADO = {"left": "izquierdo", "right": "derecho"}
LADO_F = {"left": "izquierda", "right": "derecha"}
TAM = {"small": "pequeño", "moderate": "moderado", "large": "importante"}
GRADO = {"mild": "leve", "moderate": "moderada", "marked": "marcada"}
ZONA = {"upper": "superior", "mid": "medio", "lower": "inferior"}
DISPOSITIVO = {"ett": "tubo endotraqueal", "cvc": "catéter venoso central", "ngt": "sonda nasogástrica"}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _hedge(text: str, uncertain: bool, rng) -> str:
    if not uncertain:
        return text
    return _pick(rng, [f"Posible {text[0].lower()}{text[1:]}", f"No se descarta {text[0].lower()}{text[1:]}"])


def write_report_es(findings: dict[str, Any], rng: np.random.Generator
                    ) -> tuple[str, str, list[dict[str, str]], dict[str, Optional[float]]]:
    """(findings text, impression text, topics, PadChest labels) for a ground-truth findings dict."""
    sentences: list[tuple[str, str]] = []  # (text, topic)
    labels: dict[str, Optional[float]] = {k: None for k in PADCHEST_LABELS}

    def put(label: str, uncertain: bool) -> None:
        labels[label] = -1.0 if uncertain else 1.0

    if "support_devices" in findings:
        devs = findings["support_devices"]["devices"]
        sentences.append((f"{DISPOSITIVO[devs[0]][0].upper()}{DISPOSITIVO[devs[0]][1:]}"
                          + "".join(f" y {DISPOSITIVO[d]}" for d in devs[1:]) + " en posición adecuada.", "devices"))
        put("support devices", False)
    if "cardiomegaly" in findings:
        cm = findings["cardiomegaly"]
        sentences.append((_pick(rng, [f"Cardiomegalia {GRADO[cm['severity']]}.",
                                      "Índice cardiotorácico aumentado."]), "heart"))
        put("cardiomegaly", False)
    elif rng.random() < 0.5:
        sentences.append((_pick(rng, ["Índice cardiotorácico normal.", "Sin cardiomegalia."]), "heart"))
        labels["cardiomegaly"] = 0.0
    if "pleural_effusion" in findings:
        pe = findings["pleural_effusion"]
        sides = list(pe["sizes"])
        if len(sides) == 2:
            text = "Derrame pleural bilateral."
        else:
            text = f"Derrame pleural {LADO[sides[0]]} {TAM[pe['sizes'][sides[0]]]}."
        sentences.append((_hedge(text, pe["uncertain"], rng), "pleura"))
        put("pleural effusion", pe["uncertain"])
    elif rng.random() < 0.6:
        sentences.append((_pick(rng, ["Senos costofrénicos libres.", "Sin derrame pleural."]), "pleura"))
        labels["pleural effusion"] = 0.0
    if "pneumothorax" in findings:
        pt = findings["pneumothorax"]
        sentences.append((_hedge(f"Neumotórax {LADO[pt['side']]} {TAM[pt['size']]}.", pt["uncertain"], rng), "pleura"))
        put("pneumothorax", pt["uncertain"])
    elif rng.random() < 0.4:
        sentences.append(("No se observa neumotórax.", "pleura"))
        labels["pneumothorax"] = 0.0
    if "consolidation" in findings:
        c = findings["consolidation"]
        text = f"Consolidación en campo {ZONA[c['zone']]} {LADO[c['side']]}."
        sentences.append((_hedge(text, c["uncertain"], rng), "lungs"))
        put("consolidation", c["uncertain"])
        if c["uncertain"]:
            put("pneumonia", True)
    if "atelectasis" in findings:
        a = findings["atelectasis"]
        sentences.append((_hedge(f"Atelectasia laminar basal {LADO_F[a['side']]}.", a["uncertain"], rng), "lungs"))
        put("atelectasis", a["uncertain"])
    if "edema" in findings:
        e = findings["edema"]
        sentences.append((_hedge(f"Signos de edema pulmonar {'leve' if e['severity'] == 'mild' else 'moderado'}.",
                                 e["uncertain"], rng), "lungs"))
        put("pulmonary edema", e["uncertain"])
    pathologic = [k for k in PADCHEST_LABELS if k not in ("normal", "support devices") and labels[k] in (1.0, -1.0)]
    if not pathologic:
        sentences.append((_pick(rng, ["Sin hallazgos patológicos significativos.", "Parénquima pulmonar sin alteraciones.",
                                      "No se observan alteraciones pleuroparenquimatosas."]), "lungs"))
        labels["normal"] = 1.0
    body = [t for t, _ in sentences]
    impression = ("Estudio dentro de la normalidad." if not pathologic else
                  _pick(rng, ["Hallazgos descritos.", "Correlacionar con la clínica."]))
    topics = [{"text": t, "topic": topic} for t, topic in sentences]
    return " ".join(body), impression, topics, labels
