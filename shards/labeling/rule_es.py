"""Rule labeler for Spanish PadChest reports -> PadChest main labels (label set ``padchest``).

Same engine as the English labeler (:mod:`shards.labeling.engine`) on accent-folded,
lower-cased text ("neumotórax" = "neumotorax").  Mentions per main label:

* cardiomegaly: cardiomegalia, aumento de la silueta / del indice cardiotoracico; "silueta
  cardiaca (de tamano) normal", "indice cardiotoracico normal" are explicit negatives;
* pleural effusion: derrame (not pericardico), liquido pleural, pinzamiento del seno / angulo
  costofrenico (PadChest maps "costophrenic angle blunting" onto effusion); "senos
  costofrenicos libres" is an explicit negative;
* pneumothorax (incl. hidroneumotorax), atelectasis (atelectasia, colapso), consolidation
  (consolidacion, condensacion, infiltrado, patron alveolar / intersticial, ocupacion del
  espacio aereo), pneumonia (neumonia, foco / proceso neumonico, infeccion), nodule (nodulo,
  masa, tumoracion), fracture (fractura, callo de fractura), pulmonary edema (edema,
  insuficiencia cardiaca, redistribucion vascular, congestion), support devices (marcapasos,
  sonda, tubo, cateter, via central, drenaje, DAI, electrodos, protesis, esternotomia).

Negation: "sin", "no", "no se observa(n)" / "no se aprecia(n)" / "no se identifica(n)", "no
signos de", "ausencia de", "se descarta", "descartar", "resolucion de", "retirada de";
post "resuelto", "ha desaparecido", "retirado".  Uncertainty (checked first, so "no se
descarta" is uncertain, not negated): "posible", "probable", "sugestivo de", "sospecha de",
"no se descarta", "no se puede descartar", "dudoso", "a valorar", "versus".  "sin cambios"
is a pseudo-negation (unchanged = present).

``normal`` = 1 when no other label (support devices included: PadChest does not call a
study with a device normal) is positive or uncertain and the report either states normality ("sin hallazgos", "normal", "sin
alteraciones", "dentro de la normalidad") or negates one of the labels; else blank.
"""
from __future__ import annotations

import re
import unicodedata

from configs.labelsets import PADCHEST_LABELS
from shards.labeling.engine import Mention, RuleSet, aggregate, compile_alternatives, sentence_mentions
from shards.labeling.registry import LABELERS, Labels

_M = {
    "cardiomegaly": [r"cardiomegalia", r"aumento (?:del tamano )?de (?:la )?silueta cardiaca",
                     r"silueta cardiaca (?:\w+ )?(?:aumentada|agrandada)", r"aumento del indice cardiotoracico",
                     r"indice cardiotoracico (?:\w+ )?aumentado"],
    "pleural effusion": [r"derrames?(?! pericardico)", r"liquido pleural", r"hidroneumotorax",
                         r"pinzamiento (?:del |de los |de ambos )?(?:senos?|angulos?) costofrenicos?"],
    "pneumothorax": [r"neumotorax", r"\bptx\b"],
    "atelectasis": [r"atelectasi\w*", r"colapso"],
    "consolidation": [r"consolidaci\w*", r"condensaci\w*", r"infiltrados?", r"patron (?:alveolar|intersticial)",
                      r"ocupacion del espacio aereo"],
    "pneumonia": [r"neumonia", r"bronconeumonia", r"(?:foco|proceso) neumonico", r"infecci\w*"],
    "nodule": [r"nodul\w*", r"\bmasas?\b", r"tumoraci\w*"],
    "fracture": [r"fractur\w*", r"\bfx\b"],
    "pulmonary edema": [r"edema", r"insuficiencia cardiaca", r"redistribucion vascular",
                        r"congestion (?:vascular|pulmonar|venosa)", r"hipertension venosa pulmonar"],
    "support devices": [r"marcapasos", r"\bsondas?\b", r"\bsng\b", r"\btubo\b", r"\btet\b", r"cateter\w*",
                        r"via central", r"drenajes?", r"\bdai\b", r"desfibrilador", r"electrodos?", r"protesis",
                        r"esternotomia", r"reservorio", r"dispositivos?"],
}
_NORMAL_WORD = r"(?:normal|dentro de (?:la )?normalidad|sin alteraciones)"
_NORMALS = {
    "cardiomegaly": re.compile(rf"(?:silueta cardiaca|indice cardiotoracico|corazon)(?: de tamano)? "
                               rf"(?:(?!aument|agrand)\w+ ){{0,3}}{_NORMAL_WORD}|tamano cardiaco normal"),
    "pleural effusion": re.compile(r"senos? costofrenicos? (?:\w+ )?libres?"),
}
_PSEUDO = [r"sin cambios", r"no ha cambiado", r"sin variaciones", r"no (?:ha )?(?:aumentado|disminuido)"]
_UNC = [r"no se (?:puede )?descarta\w*", r"no descartable", r"no es posible descartar", r"\bposibles?\b",
        r"\bprobables?\b", r"\bprobablemente\b", r"\bposiblemente\b", r"\bsugestiv[oa]s? de\b", r"\bsugiere\w*",
        r"\bsospecha de\b", r"\bsospechos[oa]s? de\b", r"\bdudos[oa]s?\b", r"\ba valorar\b", r"\bvalorar\b",
        r"\bversus\b", r"\bvs\b", r"\bpodria\w*", r"\bpuede corresponder\b", r"\ba descartar\b",
        r"\bdescartar\b(?= (?:\w+ )?(?:posible|probable))",
        r"\bno concluyente\b", r"\bimpresiona de\b"]
_NEG = [r"\bno se (?:observa|aprecia|identifica|visualiza|evidencia|objetiva|ve|demuestra)n?\b", r"\bno signos de\b",
        r"\bno hay\b", r"\bsin\b", r"\bno\b", r"\bni\b", r"\bausencia de\b", r"\bse descarta\w*\b", r"\bdescarta\w*\b",
        r"\bresolucion del?\b", r"\bretirada del?\b", r"\blibres? de\b", r"\bnegativ[oa] para\b"]
_TRIGGERS = re.compile("(?P<pseudo>" + "|".join(_PSEUDO) + ")|(?P<unc>" + "|".join(_UNC) + ")|(?P<neg>"
                       + "|".join(_NEG) + ")")
_BREAKS = re.compile(r"\b(?:pero|aunque|sin embargo|salvo|excepto|mientras)\b|\bque\b"
                     r"|,\s*(?:(?:y|o)\s+(?:se|hay|el|la)\b|(?:se|hay|con|el|la|los|las|un|una|leve|discreto|discreta|"
                     r"moderado|moderada|severo|severa|importante|pequeno|pequena|probable|posible|aumento|"
                     r"derecho|derecha|izquierdo|izquierda|bilateral|persiste|persistencia|compatible|sugestivo|"
                     r"en relacion)\b)"
                     r"|\by (?:se|hay)\b")
_W = r"(?P<w>(?:[\s,]+(?!(?:es|son|se|ha|han|hay|sin|con|no)\b)[\w/-]+){0,8}?)"
_NEG_POST = re.compile(rf"^{_W}[\s,]+(?:(?:ha|han)\s+)?(?:resuelt[oa]s?|desaparecid[oa]s?|retirad[oa]s?|"
                       r"no se (?:observa|aprecia|identifica|visualiza)n?)\b")
_UNC_POST = re.compile(rf"^{_W}[\s,]+(?:no (?:se )?descartab\w*|no se (?:puede )?descarta\w*|a valorar|dudos[oa]s?|"
                       r"no concluyente)\b"
                       r"|^\s*(?:versus|vs)\b")
RULES = RuleSet(mentions={k: compile_alternatives(v) for k, v in _M.items()}, normals=_NORMALS,
                triggers=_TRIGGERS, breaks=_BREAKS, neg_post=_NEG_POST, unc_post=_UNC_POST)
_NORMAL_REPORT = re.compile(r"sin hallazgos|\bnormal\b|sin alteraciones|dentro de (?:la )?normalidad|"
                            r"no se (?:observan|aprecian) (?:hallazgos|alteraciones)")
PATHOLOGIES = [n for n in PADCHEST_LABELS if n not in ("normal", "support devices")]
FINDINGS = [n for n in PADCHEST_LABELS if n != "normal"]  # PadChest: a report with a device is not "normal"


def fold(text: str) -> str:
    """Lower case without accents (ñ -> n as well: PadChest spells both ways)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))


def sentences(report: str) -> list[str]:
    text = fold(report).replace("\n", " ")
    return [s.strip() for s in re.split(r"(?<!\d)\.(?!\d)|;|\?", text) if s.strip()]


def explain_report_es(report: str) -> tuple[Labels, list[tuple[str, Mention]]]:
    labels: Labels = {name: None for name in PADCHEST_LABELS}
    trace: list[tuple[str, Mention]] = []
    stated_normal = False
    for sent in sentences(report or ""):
        mentions = sentence_mentions(RULES, sent)
        aggregate(labels, mentions)
        trace += [(sent, m) for m in mentions]
        stated_normal = stated_normal or bool(_NORMAL_REPORT.search(sent))
    if all(labels[n] not in (1.0, -1.0) for n in FINDINGS) and (
            stated_normal or any(labels[n] == 0.0 for n in PATHOLOGIES)):
        labels["normal"] = 1.0
    return labels, trace


def label_report_es(report: str) -> Labels:
    """PadChest main labels of one Spanish report: 1.0 / 0.0 / -1.0 / None."""
    return explain_report_es(report)[0]


@LABELERS.register("rrg_es")
class SpanishRuleLabeler:
    """The Spanish PadChest rule labeler (label set ``padchest``)."""

    label_set = "padchest"

    def __call__(self, reports: list[str]) -> list[Labels]:
        return [label_report_es(r) for r in reports]

    def explain(self, report: str) -> tuple[Labels, list[tuple[str, Mention]]]:
        return explain_report_es(report)
