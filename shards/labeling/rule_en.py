"""Offline rule-based CheXpert-14 labeler for English reports (no weights, no network).

Pipeline (the CheXpert labeler's design, written afresh; engine in :mod:`shards.labeling.engine`):

1. **Sections and sentences** (:func:`sentences`): lower-case; text under INDICATION, HISTORY,
   COMPARISON, TECHNIQUE, EXAMINATION and similar headers is dropped (a radiologist labels what
   the study shows, not why it was ordered: "r/o pneumonia" is no finding); FINDINGS,
   IMPRESSION, CONCLUSION and unheaded text are kept; split on ``.``/``;``/``?``/list numbers
   (decimals such as ``4.5`` stay whole).
2. **Mentions**, one phrase list per observation (CheXpert definitions):

   * *Enlarged Cardiomediastinum*: widened/enlarged mediastinum or cardiomediastinal silhouette.
     "normal cardiomediastinal silhouette" and the like are explicit negatives.
   * *Cardiomegaly*: cardiomegaly, enlarged heart / cardiac silhouette; "heart size is normal",
     "top-normal", "upper limits of normal" are explicit negatives.
   * *Lung Lesion*: nodule, mass, lung lesion, tumour, neoplasm, metastasis, carcinoma
     (not lytic / sclerotic / osseous lesions; a calcified *granuloma* is outside the 14).
   * *Lung Opacity*: opacity / opacification, infiltrate, density, haziness, airspace disease,
     ground glass.  "Lungs are clear" is *not* a mention (the CheXpert labeler leaves it blank).
   * *Edema*: edema, vascular / pulmonary congestion, cephalization, CHF / heart failure.
   * *Consolidation*, *Pneumonia* (pneumonia, pneumonitis, infection), *Atelectasis*
     (atelectasis, collapse), *Pneumothorax* (incl. hydropneumothorax), *Fracture* (old and
     healed fractures count: the CheXpert labeler does not grade age).
   * *Pleural Effusion*: effusion (not pericardial), pleural fluid, hydrothorax,
     hydropneumothorax.  **Blunting of the costophrenic angle alone is uncertain (-1)**: it is
     a small effusion or pleural thickening; an effusion named in the report decides.
   * *Pleural Other*: pleural thickening / plaques / scarring / calcification, fibrothorax,
     apical cap.  *Support Devices*: lines, tubes, catheters, pacemakers, leads, wires,
     valves, ports, drains, stents, hardware, prostheses (not Kerley / septal / pleural lines; surgical
     clips are not support devices).
3. **Negation and uncertainty** (engine): pre-negation ("no", "without", "free of", "negative
   for", "no evidence of", "resolution of", "removal of", "rather than"), pre-uncertainty
   ("may", "possible", "likely", "suggestive of", "concerning for", "may represent", "question
   of", "cannot exclude", "versus", "borderline"), post-negation ("has resolved", "is not
   seen", "has been removed"), post-uncertainty ("cannot be excluded", "X versus Y").  Pseudo-
   negations ("no change in", "without interval change", "not significantly changed") keep a
   finding positive; so do temporal words ("unchanged", "stable", "persistent", "improved"):
   a finding described as unchanged is present.  A resolved or removed finding is absent (0).
4. **Aggregation** over the report per observation: positive (1) beats uncertain (-1) beats
   negative (0); never mentioned -> blank (None).
5. **No Finding** = 1 exactly when none of the 12 pathologies (every label but No Finding and
   Support Devices; Fracture and Pleural Other count) is positive or uncertain, else blank --
   the CheXpert rule (it never emits 0).  Findings outside the 14 (granuloma, scoliosis,
   hiatal hernia) do not change it.
"""
from __future__ import annotations

import re

from configs.labelsets import CHEXPERT_LABELS
from shards.labeling.engine import Mention, RuleSet, aggregate, compile_alternatives, sentence_mentions
from shards.labeling.registry import LABELERS, Labels

_M = {
    "Enlarged Cardiomediastinum": [
        r"(?:mediastinal|mediastinum) (?:is |appears )?(?:\w+ )?widen\w*", r"widen\w* (?:of the )?(?:superior )?mediastin\w*",
        r"enlarge\w* (?:of the )?cardiomediastin\w*(?: silhouette| contours?)?",
        r"cardiomediastinal (?:silhouette|contours?) (?:\w+ ){0,3}(?:enlarged|widened)",
        r"mediastin\w* (?:enlargement|widening)"],
    "Cardiomegaly": [
        r"cardiomegaly", r"(?:enlarge\w*|large) (?:cardiac silhouette|heart)", r"cardiac enlargement",
        r"enlargement of the (?:cardiac silhouette|heart)",
        r"(?:heart|cardiac silhouette|cardiac size|heart size)(?: size)? (?:\w+ ){0,3}(?:enlarged|large|increased)"],
    "Lung Lesion": [r"nodul\w*", r"\bmass(?:es)?\b(?! effect)", r"\bmass-?like\b",
                    r"lesion(?<!lytic lesion)(?<!sclerotic lesion)(?<!osseous lesion)(?<!bony lesion)(?<!skin lesion)s?",
                    r"tumou?rs?", r"neoplas\w*", r"metasta\w*", r"carcinoma", r"malignan\w*"],
    "Lung Opacity": [r"opaci\w*", r"infiltrat\w*", r"densit(?:y|ies)", r"haziness", r"\bhazy",
                     r"air ?-?space (?:disease|process|opacit\w*)", r"ground ?-?glass"],
    "Edema": [r"edema(?<!soft tissue edema)", r"(?:vascular|pulmonary|venous|hilar) congestion", r"cephalization",
              r"kerley (?:b )?lines?", r"septal lines?", r"interstitial (?:edema|fluid)",
              r"(?:increased|prominent|engorged) (?:pulmonary |lung )?vascularity",
              r"(?:prominence|engorgement|indistinctness|indistinct(?:ion)?) of (?:the )?(?:central )?(?:pulmonary )?(?:vessels|vasculature)",
              r"(?:indistinct|hazy|blurr?ed|ill-defined) (?:pulmonary )?vascula\w* (?:margins?|margination|markings)",
              r"(?:pulmonary )?vascular (?:indistinctness|prominence|engorgement|redistribution)",
              r"(?:congestive )?heart failure", r"\bchf\b", r"pulmonary venous (?:hypertension|engorgement)",
              r"vascular engorgement", r"fluid overload"],
    "Consolidation": [r"consolidat\w*"],
    "Pneumonia": [r"pneumoni\w*", r"infectio\w*"],
    "Atelectasis": [r"atelecta\w*", r"collapse"],
    "Pneumothorax": [r"pneumothora\w*", r"\bptx\b"],
    "Pleural Effusion": [r"effusion(?<!pericardial effusion)s?", r"pleural fluid", r"hydropneumothorax", r"hydrothorax",
                         r"blunting of (?:the )?(?:\w+ )?costophrenic(?: angles?| sulc\w*)?",
                         r"costophrenic (?:angles?|sulc\w*) (?:is |are )?(?:\w+ )?blunt\w*"],
    "Pleural Other": [r"pleural (?:thickening|plaques?|scar\w*|calcificat\w*)", r"fibrothorax",
                      r"apical (?:pleural )?(?:scar\w*|cap|thickening)", r"calcified pleura"],
    "Fracture": [r"fractur\w*", r"\bfx\b"],
    "Support Devices": [
        r"line(?<!\wline)(?<!septal line)(?<!kerley b line)(?<!kerley line)(?<!pleural line)(?<!skin line)"
        r"(?<!fissure line)(?<!fissural line)(?<!midline)s?\b",
        r"tubes?\b", r"catheters?",
        r"pacemakers?", r"pacer", r"\bleads\b", r"wires?\b", r"valves?\b", r"\bports?\b",
        r"port-a-cath", r"\bpicc\b", r"drains?\b", r"\bstents?\b", r"swan[- ]?ganz", r"\ba?icd\b", r"defibrillator",
        r"hardware", r"prosthe\w*", r"tracheostomy", r"\btrach\b", r"sternotomy", r"devices?\b", r"coils?\b"],
}
_NOT_ENLARGED = r"(?:(?!enlarg|large|increas|cardiomegaly)\w+ ){0,4}"
_NORMAL_WORDS = r"(?:normal|within normal limits|unremarkable|upper limits? of normal|top[- ]normal|upper[- ]normal)"
_NORMALS = {
    "Cardiomegaly": re.compile(
        rf"(?:heart|cardiac)(?: size| silhouette| contours?)? {_NOT_ENLARGED}{_NORMAL_WORDS}"
        r"|(?:normal|top[- ]normal) (?:heart|cardiac)"),
    "Enlarged Cardiomediastinum": re.compile(
        rf"(?:cardiomediastinal|mediastinal|mediastinum)(?: silhouettes?| contours?)? {_NOT_ENLARGED}{_NORMAL_WORDS}"
        r"|normal (?:\w+ ){0,3}?(?:cardio)?mediastin"),
}
_PSEUDO = [r"no (?:significant |appreciable |definite )?(?:interval )?change", r"not (?:significantly )?changed",
           r"without (?:significant |appreciable )?(?:interval )?change", r"no (?:significant )?(?:increase|decrease)",
           r"not only", r"no longer (?:requires?|needs?)"]
_UNC = [r"\bmay\b", r"\bmight\b", r"\bcould\b", r"\bpossibl[ey]\b", r"\bprobabl[ey]\b", r"\b(?:un)?likely\b",
        r"\bpresum\w*", r"\bsuggest\w*", r"\bconcern\w*(?: for)?", r"\bworrisome\b", r"\bsuspicious (?:for|of)\b",
        r"\bsuspect\w*", r"\bquestionabl[ey]\b", r"\bquestion of\b", r"\bcannot (?:be )?exclude\w*",
        r"\bcan ?not (?:be )?(?:exclude\w*|rule\w* out)", r"\bcannot rule out\b", r"\bcan't (?:be )?exclude\w*",
        r"\bnot (?:be )?(?:entirely )?(?:excluded|ruled out)", r"\bversus\b", r"\bvs\b", r"\bdifferential\b",
        r"\bborderline\b", r"\bindeterminate\b", r"\bequivocal\b", r"\br/o\b", r"\brule out\b",
        r"\bdifficult to exclude\b", r"\bconsider\w*\b", r"\buncertain\b", r"\bversus\b", r"\bor less likely\b"]
_NEG = [r"\bto (?:suggest|indicate)\b", r"\bno evidence of\b", r"\bno signs? of\b", r"\bno\b", r"\bnot\b",
        r"\bwithout\b", r"\bfree of\b",
        r"\bclear of\b", r"\bnegative for\b", r"\babsence of\b", r"\bresolution of\b", r"\bresolved\b",
        r"\bremoval of\b", r"\bremoved\b", r"\brather than\b", r"\bnor\b", r"\bno longer\b", r"\bneither\b"]
_TRIGGERS = re.compile("(?P<pseudo>" + "|".join(_PSEUDO) + ")|(?P<unc>" + "|".join(_UNC) + ")|(?P<neg>"
                       + "|".join(_NEG) + ")")
_OPENERS = (r"there|the|a|an|small|large|mild|mildly|moderate|moderately|severe|new|increas\w*|decreas\w*|persist\w*|"
            r"stable|unchanged|residual|minimal|trace|tiny|bilateral|left|right|likely|possibl\w*|probabl\w*|may|"
            r"consistent|compatible|with|is|are|has|have|which|due|suggest\w*|concern\w*|in keeping|now|again|"
            r"although|but|though|no|mild|focal|patchy|multifocal|worsening|improv\w*|interval|layering|loculated")
_ADJECTIVES = (r"small|large|mild|mildly|moderate|moderately|severe|new|trace|tiny|minimal|focal|patchy|bilateral|left|"
               r"right|residual|multifocal|significant|definite|acute|appreciable|sizable|layering|loculated")
_BREAKS = re.compile(
    r"\b(?:but|however|although|though|which|whereas|except|aside from|apart from|otherwise|while|"
    r"with the exception of)\b"
    rf"|(?P<adj>,\s*(?:{_ADJECTIVES})\b)"
    rf"|,\s*(?:(?:and|or)\s+(?:there|the|a|an|is|are|has|have|with)\b|(?:{_OPENERS})\b)"
    r"|\b(?:is|are|was|were) (?:seen|noted|present|identified|demonstrated|visuali[sz]ed|appreciated|evident)\b"
    r"|\band (?:there|the)\b")
_W = r"(?P<w>(?:[\s,]+(?!(?:is|are|was|were|has|have|had|remains?|persists?|appears?|there|no|with)\b)[\w/-]+){0,8}?)"
_NEG_POST = re.compile(
    rf"^{_W}[\s,]+(?:(?:is|are|was|were|has been|have been|has|have|had)\s+)?(?:now\s+)?"
    r"(?:not (?:been )?(?:seen|identified|present|visuali[sz]ed|appreciated|evident|demonstrated|detected|noted)|"
    r"(?:(?:essentially|completely|entirely|fully|since)\s+)?(?:resolved|cleared)|absent|(?:been )?removed|"
    r"no longer (?:seen|present|visuali[sz]ed|evident|identified))\b")
_UNC_POST = re.compile(
    rf"^{_W}[\s,]+(?:(?:is|are|was|were)\s+)?(?:(?:cannot|can ?not|can't|could not|may not)\s+(?:be\s+)?"
    r"(?:entirely\s+)?(?:excluded|ruled out)|not (?:be )?(?:entirely )?(?:excluded|ruled out)|"
    r"(?:suspected|questionable|questioned|a consideration|possible)\b|"
    r"likely(?=\s*$|\s+(?:present|given|due|in|at|on|to|related|secondary)\b))"
    r"|^\s*(?:versus|vs)\b|^\s*or\s+(?:\w+\s+)?(?:scar\w*|thickening)\b")
_KEYS = {
    "Enlarged Cardiomediastinum": ("mediastin",), "Cardiomegaly": ("cardiomegaly", "heart", "cardiac"),
    "Lung Lesion": ("nodul", "mass", "lesion", "tumo", "neoplas", "metasta", "carcinoma", "malignan"),  # noqa: E501
    "Lung Opacity": ("opaci", "infiltrat", "densit", "haz", "space", "ground"),
    "Edema": ("edema", "congestion", "cephaliz", "failure", "chf", "venous", "engorgement", "overload", "kerley",
              "septal", "interstitial", "vascul", "vessels"),
    "Consolidation": ("consolidat",), "Pneumonia": ("pneumoni", "infectio"), "Atelectasis": ("atelecta", "collapse"),
    "Pneumothorax": ("pneumothora", "ptx"), "Pleural Effusion": ("effusion", "fluid", "hydro", "blunt"),
    "Pleural Other": ("pleura", "fibrothorax", "apical"), "Fracture": ("fractur", "fx"),
    "Support Devices": ("line", "tube", "cathet", "pace", "lead", "wire", "clip", "valve", "port", "picc", "drain",
                        "stent", "swan", "icd", "defib", "hardware", "prosthe", "trach", "sternotomy", "device", "coil"),
}
RULES = RuleSet(mentions={k: compile_alternatives(v) for k, v in _M.items()}, normals=_NORMALS,
                triggers=_TRIGGERS, breaks=_BREAKS, neg_post=_NEG_POST, unc_post=_UNC_POST, keys=_KEYS,
                list_closer=re.compile(r"\b(?:or|nor)\b|,\s*and\b"))

_SECTION = re.compile(r"\b(findings|impression|conclusions?|summary|history|clinical history|indications?|"
                      r"comparisons?|technique|examination|exam|reason for (?:exam|examination|study)|"
                      r"clinical information|notification|wet read)\s*:")
_DROP = {"history", "clinical history", "indication", "indications", "comparison", "comparisons", "technique",
         "examination", "exam", "clinical information", "notification", "wet read"}


def sentences(report: str) -> list[str]:
    """Lower-cased sentences of the sections a labeler reads (see the module docstring)."""
    text = report.lower().replace("\n", " ")
    kept, pos, keep = [], 0, True
    for m in _SECTION.finditer(text):
        if keep:
            kept.append(text[pos:m.start()])
        name = m.group(1)
        keep = not (name in _DROP or name.startswith("reason for"))
        pos = m.end()
    if keep:
        kept.append(text[pos:])
    text = ". ".join(kept)
    text = re.sub(r"(?:^|\s)\d+[.)]\s", ". ", text)  # numbered lists
    return [s.strip() for s in re.split(r"(?<!\d)\.(?!\d)|;|\?", text) if s.strip()]


# A nodule / mass / lesion that the same sentence explains as something that is not a lung lesion
# ("nodular density ... represents a healing rib fracture", "... likely a nipple shadow"), or that
# sits in a bone or on the skin: not a Lung Lesion.  The window is bounded (linear time).
_NOT_LESION = re.compile(
    r"^[^.;]{0,80}?\b(?:represents?|representing|reflects?|reflecting|is|are|likely|probably|due to|corresponds? to|"
    r"compatible with|consistent with|secondary to|from|most likely|attributable to|related to)\s+"
    r"(?:(?:an?|the|a|prior|old|healing|healed|known|calcified|overlying|small|end-on|left|right)\s+){0,4}"
    r"(?:rib fractures?|fractures?|callus|nipple(?: shadows?| markers?)?|granulomas?|bone islands?|costochondral\w*|"
    r"(?:end[- ]on )?vessels?(?: seen end[- ]on)?|artifacts?|osteophytes?|skin (?:folds?|lesions?|tags?)|"
    r"(?:epicardial )?fat pads?|buttons?|ecg leads?|monitoring (?:leads?|devices?)|calcified lymph nodes?)\b"
    r"|^\s*(?:\w+\s+){0,2}(?:in|of|within|involving|along)\s+(?:the\s+)?(?:\w+\s+){0,3}"
    r"(?:ribs?|clavicles?|humer\w*|scapula\w*|vertebra\w*|spine|sternum|bones?|skin|breast|thyroid)\b")


def explain_sentence(sent: str) -> list[Mention]:
    """The mentions of one sentence, each with its value and the rule that set it."""
    out = []
    for m in sentence_mentions(RULES, sent):
        if m.label == "Pleural Effusion" and "blunt" in m.text and m.value == 1.0:
            m = Mention(m.label, m.start, m.end, m.text, -1.0, "blunting alone is uncertain (CheXpert)")
        if m.label in ("Lung Lesion", "Lung Opacity") and m.value != 0.0:
            why = _NOT_LESION.search(sent[m.end:m.end + 160])
            if why:
                m = Mention(m.label, m.start, m.end, m.text, 0.0,
                            f"explained as not a lung finding ('{why.group().strip()[:60]}')")
        out.append(m)
    return out


def label_sentence_mentions(sent: str) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for m in explain_sentence(sent):
        found.setdefault(m.label, []).append(m.value)
    return found


PATHOLOGIES = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]


def no_finding(labels: Labels) -> None:
    """The CheXpert No Finding rule (module docstring, step 5)."""
    if all(labels[n] not in (1.0, -1.0) for n in PATHOLOGIES):
        labels["No Finding"] = 1.0


def explain_report(report: str) -> tuple[Labels, list[tuple[str, Mention]]]:
    """(labels, [(sentence, mention), ...]) of one report."""
    labels: Labels = {name: None for name in CHEXPERT_LABELS}
    trace: list[tuple[str, Mention]] = []
    if not report or not report.strip():
        return labels, trace
    for sent in sentences(report):
        mentions = explain_sentence(sent)
        aggregate(labels, mentions)
        trace += [(sent, m) for m in mentions]
    no_finding(labels)
    return labels, trace


def label_report(report: str) -> Labels:
    """CheXpert-14 labels of one report: 1.0 / 0.0 / -1.0 / None (not mentioned)."""
    return explain_report(report)[0]


@LABELERS.register("rrg")
class RuleLabeler:
    """The English rule labeler; ``__call__(reports) -> list of label dicts`` (label set ``chexpert``)."""

    label_set = "chexpert"

    def __call__(self, reports: list[str]) -> list[Labels]:
        return [label_report(r) for r in reports]

    def explain(self, report: str) -> tuple[Labels, list[tuple[str, Mention]]]:
        return explain_report(report)
