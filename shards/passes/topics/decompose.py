"""Rule-based topic decomposer: a report -> an ordered list of (topic, sentence), one topic per sentence.

The offline default backend of ``rrg annotate topics`` (LLaVA-TA's topic annotation, written
afresh).  Per sentence, in this order:

1. **Clean.** Comparisons with priors are removed: a sentence whose only content is a
   comparison ("No significant change since the prior study.", "Heart size is unchanged.") is
   dropped; comparison phrases inside a finding ("Compared to the prior radiograph, ...",
   "new", "interval", "since the prior exam") are cut and the finding kept.  Speculation is
   removed: a sentence that is only a hedged finding ("Possible small left pneumothorax.",
   "Pneumonia cannot be excluded.") or a recommendation is dropped; a trailing hedge clause
   ("..., which may represent atelectasis", "..., concerning for pneumonia") is cut and the
   observed finding kept.
2. **Segment.** The sentence is cut at contrast and negation boundaries (", but", ";",
   "without", ", no") so that "small right effusion without pneumothorax" is two statements.
3. **Assign.** Mentions come from the shared labeler engine (shards/labeling:
   ``label_sentence_mentions`` - no second phrase list).  A negated mention becomes the
   standardised negative of its pathology topic ("Pneumothorax is absent."), one per topic,
   so a list ("No effusion or pneumothorax.") gives one row per topic.  A positive statement
   goes to its pathology topic; several positives are split at list boundaries, and a lung
   opacity named together with its diagnosis ("opacities consistent with edema") belongs to
   the diagnosis.  A statement without a pathology mention ("Heart size is normal.") goes to
   the first anatomy/auxiliary topic whose keywords it contains, else to the ontology's
   fallback topic ``aux-other`` ("The patient is rotated."; counted as ``other``).  Nothing
   that survives cleaning is dropped.
4. **Merge.** A topic named again later in the report ("IMPRESSION: Mild cardiomegaly." after
   "The heart is mildly enlarged.") keeps every distinct statement: they are joined, in report
   order, into that topic's one row (counted as ``merged``; a statement identical to one already
   there is counted as ``repeated`` and kept once).  A topic with only negatives keeps one
   standardised negative.  A topic with a positive statement keeps a negative in its own words
   when the negative names that topic alone ("Right pleural effusion. No left pleural
   effusion."); a negated *list* that names a topic stated positively elsewhere is a contradiction
   the standard sentence cannot carry: it is counted (``conflict``) and left out of that topic.
5. **Order.** Rows are sorted by the ontology order (shards/passes/topics/ontology.py).

``decompose(report) -> (rows, counts)``; counts: ``sentences`` seen; dropped whole sentences
(``comparison``, ``speculation``, ``cross_reference`` such as "Findings as above."); and the
``other`` / ``merged`` / ``repeated`` / ``conflict`` statements above.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from shards.passes.topics.ontology import BY_LABEL, BY_NAME, FALLBACK, ORDER

Row = dict[str, str]
DROPPED = ("comparison", "speculation", "cross_reference")  # whole sentences left out by clean_sentence

_HEADER = re.compile(r"\b(?:FINDINGS|IMPRESSION|HISTORY|INDICATION|COMPARISON|TECHNIQUE|CONCLUSION)\s*:\s*", re.I)
_XREF = re.compile(r"^(?:(?:the )?(?:findings|impression) (?:are |is )?)?(?:as )?(?:(?:described|detailed|noted|"
                   r"discussed) )?(?:above|below)$|^see (?:above|below|findings)$", re.I)
_RECOMMEND = re.compile(r"\b(?:recommend\w*|clinical(?:ly)? correlat\w*|correlate clinically|follow[- ]?up|"
                        r"advised|could be (?:performed|obtained|considered)|if clinically)\b", re.I)
_HEDGE_START = re.compile(r"^(?:possible|possibly|probable|probably|likely|questionable|suspected|suspicious|"
                          r"equivocal|cannot exclude|can ?not exclude|can't exclude|concern for|may|might|could|"
                          r"there (?:is|may be|could be) (?:a )?(?:possible|questionable|probable|likely|"
                          r"suspected|suspicion of))\b", re.I)
_HEDGE_POST = re.compile(r"\b(?:cannot|can ?not|can't) (?:be )?(?:excluded|ruled out)|\bnot (?:be )?excluded|"
                         r"\b(?:is|are) (?:possible|suspected|questioned|not entirely excluded)\b", re.I)
_HEDGE_TAIL = re.compile(r"(?:,\s*|\s+)(?:(?:which|that) )?(?:may|might|could|can) (?:represent|reflect|indicate|"
                         r"be (?:due to|related to|secondary to)|be)\b.*$|,?\s*(?:concerning|suspicious|worrisome) "
                         r"for\b.*$|,?\s*(?:(?:most|more|less) )?(?:likely|possibly|probably)\b.*$|"
                         r",?\s*(?:versus|vs\.?)\s.*$", re.I)
_COMPARE_ONLY = re.compile(r"^(?:comparison\b|no (?:significant |substantial |"
                           r"appreciable )?(?:interval )?change\b|(?:there has been )?no (?:significant )?"
                           r"interval change\b|(?:overall )?(?:unchanged|stable|similar)(?: appearance| "
                           r"examination| study| exam)?$|.*\b(?:is|are|remains?|appears?|has|have|has been|"
                           r"have been) (?:again )?(?:unchanged|stable|similar|not (?:significantly )?changed)"
                           r"(?: in (?:size|appearance|position))?\s*(?:(?:since|from|compared (?:to|with)|"
                           r"relative to) .*)?$)", re.I)
_PRIOR = r"(?:the )?(?:prior|previous|preceding|earlier|last|recent)(?: \w+){0,2}?(?: (?:study|studies|exam|" \
         r"examination|radiographs?|films?|images?|ones?|day|cxr))?"
_COMPARE_CUT = [
    re.compile(r"^(?:interval )?(?:slight |mild |marked )?(?:increase|decrease|improvement|worsening) "
               r"(?:in (?:the )?(?:size|extent) )?(?:of )?(?:the )?", re.I),
    re.compile(rf"^(?:as )?(?:compared|in comparison) (?:to|with) {_PRIOR},?\s*", re.I),
    re.compile(rf",?\s*(?:as )?(?:compared (?:to|with)|since|from|relative to|than (?:on|in)) {_PRIOR}", re.I),
    re.compile(r",?\s*(?:which )?(?:has|have) (?:slightly |mildly |markedly )?(?:increased|decreased|improved|"
               r"worsened|resolved partially)(?: in (?:size|extent))?", re.I),
    re.compile(r"\b(?:new|newly|interval(?:ly)?|again|redemonstrated|re-demonstrated|persistent|persisting|"
               r"known|previously (?:seen|noted|described))\b\s*", re.I),
    re.compile(r"^(?:stable|unchanged)\s+(?=\w)", re.I),
    re.compile(r"^(?:slightly |mildly |markedly )?(?:increased|decreased|increasing|decreasing|improved|improving|"
               r"worsened|worsening)\s+(?=\w)", re.I),
]
_SEGMENT = re.compile(r",?\s+(?:but|however|although|whereas)\s+|;\s*|,\s+and\s+(?=(?:there|the|no)\b)|,?\s+(?=(?:without|with no)\b)|,\s+(?=no\b)",
                      re.I)
_LIST = re.compile(r",\s*(?:and\s+)?|\s+and\s+|\s+with\s+", re.I)
_NEG_WORD = re.compile(r"\b(?:no|not|without|free of|negative for|absence of|absent|resolved|no longer)\b", re.I)
_OPACITY_DIAGNOSES = {"Edema", "Consolidation", "Atelectasis", "Pneumonia", "Lung Lesion"}
ANATOMY_KEYWORDS: list[tuple[str, re.Pattern]] = [(name, re.compile(rx, re.I)) for name, rx in [
    ("organ-heart", r"\bheart|\bcardiac|cardiomediastinal"),
    ("organ-mediastinum", r"mediastin|\bhil(?:um|ar|a)\b|\baort|\btrachea"),
    ("organ-pleura", r"\bpleura|costophrenic"),
    ("organ-lungs", r"\blungs?\b|\bpulmonary|air ?space|parenchym|lung volumes|\b(?:upper|middle|lower) lobes?\b|"
                    r"\blingula"),
    ("organ-bones", r"osseous|\bbon(?:e|es|y)\b|\bribs?\b|\bspine\b|vertebra|skelet|clavicle|scoliosis|kyphosis"),
    ("organ-diaphragm", r"diaphragm|abdom|free air|\bbowel|\bstomach|upper quadrant"),
    ("aux-impression", r"cardiopulmonary|intrathoracic|chest radiograph|acute (?:process|abnormality|findings?)|"
                       r"normal (?:study|chest|exam)"),
]]


def split_sentences(report: str) -> list[str]:
    """Case-preserving sentence split (decimals such as 4.5 stay whole; section headers removed)."""
    text = _HEADER.sub(". ", report.replace("\n", " "))
    return [s.strip() for s in re.split(r"(?<!\d)\.(?!\d)|\?|;(?=\s*[A-Z])", text) if s.strip(" ,")]


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" ,;:")
    text = re.sub(r"^(?:and|but|with|also)\s+", "", text, flags=re.I).strip(" ,")
    text = re.sub(r"^there (?:is|are)\s*$", "", text, flags=re.I)
    return f"{text[0].upper()}{text[1:]}." if text else ""


def clean_sentence(sentence: str) -> tuple[Optional[str], Optional[str]]:
    """(cleaned sentence, None) or (None, why dropped: "comparison" | "speculation" | "cross_reference")."""
    s = sentence.strip().rstrip(".")
    if _XREF.match(s):
        return None, "cross_reference"
    if _RECOMMEND.search(s):
        return None, "speculation"
    if _HEDGE_START.search(s) or _HEDGE_POST.search(s):
        return None, "speculation"
    if _COMPARE_ONLY.match(s):
        return None, "comparison"
    for rx in _COMPARE_CUT:
        s = rx.sub(" " if rx.pattern.startswith(r"\b") else "", s).strip()
    s = _HEDGE_TAIL.sub("", s).strip()
    s = re.sub(r"\bthere (is|are) (?=[.,]|$)", "", s, flags=re.I)
    cleaned = _tidy(s)
    if not cleaned or not re.search(r"[a-z]{3}", cleaned, re.I):
        return None, "comparison"
    return cleaned, None


def _mentions(text: str) -> dict[str, float]:
    from shards.labeling import label_sentence_mentions

    rank = {1.0: 3, -1.0: 2, 0.0: 1}
    return {obs: max(vals, key=rank.__getitem__) for obs, vals in label_sentence_mentions(text.lower()).items()}


def _anatomy_topic(text: str) -> Optional[str]:
    return next((name for name, rx in ANATOMY_KEYWORDS if rx.search(text)), None)


def _positive_rows(text: str, positives: list[str]) -> list[Row]:
    """Rows for a statement with positive mentions: one topic, or split at list boundaries."""
    if "Lung Opacity" in positives and _OPACITY_DIAGNOSES & set(positives):
        positives = [p for p in positives if p != "Lung Opacity"]
    if len(positives) == 1:
        return [{"topic": BY_LABEL[positives[0]].name, "sentence": _tidy(text)}]
    rows: list[Row] = []
    for part in _LIST.split(text):
        pos = [o for o, v in _mentions(part).items() if v == 1.0 and o in positives]
        if len(pos) == 1 and not any(r["topic"] == BY_LABEL[pos[0]].name for r in rows):
            rows.append({"topic": BY_LABEL[pos[0]].name, "sentence": _tidy(part)})
        elif rows and not pos:
            rows[-1]["sentence"] = _tidy(rows[-1]["sentence"].rstrip(".") + " with " + part)
        else:
            first = min(positives, key=lambda o: ORDER[BY_LABEL[o].name])
            return [{"topic": BY_LABEL[first].name, "sentence": _tidy(text)}]
    return rows


def _segment_rows(seg: str, counts: Counter) -> list[Row]:
    """Rows of one statement; a negative row keeps its own wording (``own``) and whether it names one topic."""
    mentions = _mentions(seg)
    positives = sorted((o for o, v in mentions.items() if v == 1.0), key=lambda o: ORDER[BY_LABEL[o].name])
    negatives = [o for o, v in mentions.items() if v == 0.0]
    if positives:
        return _positive_rows(seg, positives)
    if negatives and _NEG_WORD.search(seg):
        alone = "1" if len(negatives) == 1 else ""
        return [{"topic": BY_LABEL[o].name, "sentence": BY_LABEL[o].absent_sentence(), "negative": "1",
                 "own": _tidy(seg), "alone": alone}
                for o in sorted(negatives, key=lambda o: ORDER[BY_LABEL[o].name])]
    uncertain = sorted((o for o, v in mentions.items() if v == -1.0), key=lambda o: ORDER[BY_LABEL[o].name])
    if uncertain:  # hedged wording was dropped by clean_sentence: this is uncertain by definition
        return [{"topic": BY_LABEL[uncertain[0]].name, "sentence": _tidy(seg)}]  # ("blunting of the angle")
    topic = _anatomy_topic(seg)
    if topic is None:
        counts["other"] += 1
        topic = FALLBACK
    return [{"topic": topic, "sentence": _tidy(seg)}]


def _merge(statements: list[Row], counts: Counter) -> str:
    """One topic's statements (report order) -> its row's sentence (see the module docstring, step 4)."""
    if all(st.get("negative") for st in statements):
        kept = [statements[0]["sentence"]]
        counts["repeated"] += len(statements) - 1
    else:
        kept = []
        for st in statements:
            if not st.get("negative"):
                kept.append(st["sentence"])
            elif st.get("alone"):
                kept.append(st["own"])
            else:
                counts["conflict"] += 1
    out: list[str] = []
    for sentence in kept:
        if sentence.lower() in (o.lower() for o in out):
            counts["repeated"] += 1
        else:
            out.append(sentence)
    counts["merged"] += len(out) - 1
    return " ".join(out)


def decompose(report: str) -> tuple[list[Row], Counter]:
    """The report's (topic, sentence) rows in ontology order, and counts (see the module docstring)."""
    counts: Counter = Counter()
    statements: dict[str, list[Row]] = {}
    for sentence in split_sentences(report):
        counts["sentences"] += 1
        cleaned, why = clean_sentence(sentence)
        if cleaned is None:
            counts[why] += 1
            continue
        for seg in _SEGMENT.split(cleaned.rstrip(".")):
            if not seg.strip(" ,"):
                continue
            for row in _segment_rows(seg, counts):
                statements.setdefault(row["topic"], []).append(row)
    rows = [{"topic": t, "sentence": _merge(statements[t], counts)} for t in sorted(statements, key=ORDER.__getitem__)]
    return rows, Counter({k: v for k, v in counts.items() if v})


def join_topics(rows: list[Row]) -> str:
    """Sentences joined in ontology order (what per-topic generation is turned back into)."""
    return " ".join(r["sentence"] for r in sorted(rows, key=lambda r: ORDER.get(r["topic"], len(ORDER))))


def topic_names(rows: list[Row]) -> list[str]:
    return [r["topic"] for r in rows if r["topic"] in BY_NAME]
