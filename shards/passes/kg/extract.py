"""Entities and triples from one report: the pluggable extractor of ``rrg kg build``.

The default ``rule`` backend reuses the CheXpert labeler's engine (its sentence splitter, its
mention phrase lists and its negation/uncertainty scoping), adding an anatomy and a modifier
lexicon.  A negated mention ("no pleural effusion") yields no entity and therefore no triple.
Per sentence, with the findings that are present or uncertain:

* ``located_at``: finding -> every anatomy phrase of the sentence;
* ``modify``: modifier -> every finding of the sentence;
* ``suggestive_of``: a finding term -> its CheXpert observation when the names differ
  ("nodule" -> "Lung Lesion"), and an earlier finding -> a later one across a cue
  ("opacity ... consistent with atelectasis").

The ``hf_token`` / ``hf_causal`` backends run a LOCAL Hugging Face directory (token
classification with B-/I- FINDING|ANATOMY|MODIFIER labels, or a causal LM prompted with
``data.passes.kg.prompt`` that answers ``type: name; ...``); output that does not parse is counted and
the sentence falls back to the rule backend.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from configs.schema import Registry

EXTRACTORS: Registry = Registry("kg extractor")

ANATOMY = [
    "right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe", "lingula",
    "lung bases?", "lung apex", "apices", "apex", "bases?", "perihilar", "hilar", "hila", "hilum",
    "costophrenic angles?", "hemidiaphragms?", "diaphragm", "pleura", "pleural space", "heart", "cardiac silhouette",
    "mediastinum", "mediastinal", "cardiomediastinal", "aorta", "aortic knob", "trachea", "carina", "ribs?",
    "clavicles?", "spine", "osseous structures", "chest", "lungs?", "retrocardiac", "upper zones?", "lower zones?",
    "mid zones?", "svc", "atrium", "ventricle", "stomach", "apical", "superior vena cava"]
MODIFIERS = [
    "mild(?:ly)?", "moderate(?:ly)?", "severe(?:ly)?", "marked(?:ly)?", "small", "large", "tiny", "trace",
    "minimal", "bilateral", "left", "right", "patchy", "linear", "plate-like", "focal", "diffuse", "multifocal",
    "new", "stable", "unchanged", "increased", "decreased", "improved", "worsened", "chronic", "acute", "early",
    "hazy", "nodular", "reticular", "interstitial", "airspace", "basilar", "loculated", "layering", "displaced",
    "dense", "ill-defined", "streaky", "bat-wing", "volume loss", "blunting", "larger", "enlarged", "possible",
    "suspected", "subsegmental"]
_ANAT = re.compile(r"\b(?:" + "|".join(sorted(ANATOMY, key=len, reverse=True)) + r")\b")
_MOD = re.compile(r"\b(?:" + "|".join(sorted(MODIFIERS, key=len, reverse=True)) + r")\b")
_CUE = re.compile(r"\b(?:consistent with|suggest\w*|may (?:represent|reflect)|compatible with|concerning for|"
                  r"representing|due to|likely|from)\b")


def _engine():
    """The English rule labeler's engine (mentions with negation / uncertainty scope, sentence splitter)."""
    from shards.labeling import rule_en

    return rule_en


def normalise(term: str) -> str:
    t = re.sub(r"\s+", " ", term.strip().lower())
    if t.endswith("ies") and len(t) > 5:
        return t[:-3] + "y"
    if t.endswith("s") and not t.endswith(("ss", "us", "is")) and len(t) > 4:
        return t[:-1]
    return t


def _canon_modifier(m: str) -> str:
    return re.sub(r"ly$", "", m) if m.endswith(("ately", "ildly", "erely", "rkedly")) else m


@dataclass
class Extraction:
    """Entities (type, name) and triples (head, relation, tail) of one report; ``fallbacks`` counts
    sentences whose model output did not parse (the rule backend answered instead)."""

    entities: set[tuple[str, str]] = field(default_factory=set)
    triples: set[tuple[tuple[str, str], str, tuple[str, str]]] = field(default_factory=set)
    fallbacks: int = 0

    def add_sentence(self, findings: list[tuple[int, str]], anatomy: list[str], modifiers: list[str],
                     suggest: list[tuple[str, str]]) -> None:
        """findings: (position, name) in sentence order; suggest: explicit (finding, finding) pairs."""
        if not findings:
            return  # anatomy/modifiers of a sentence without a present finding are not knowledge
        fnodes = [("finding", f) for _, f in findings]
        self.entities.update(fnodes)
        self.entities.update(("anatomy", a) for a in anatomy)
        self.entities.update(("modifier", m) for m in modifiers)
        for f in fnodes:
            self.triples.update((f, "located_at", ("anatomy", a)) for a in anatomy)
            self.triples.update((("modifier", m), "modify", f) for m in modifiers)
        self.triples.update((("finding", a), "suggestive_of", ("finding", b)) for a, b in suggest if a != b)


def rule_sentence(sent: str, out: Extraction) -> None:
    eng = _engine()
    present: list[tuple[int, str]] = []
    suggest: list[tuple[str, str]] = []
    for m in eng.explain_sentence(sent):
        obs = m.label
        if obs == "Support Devices" or m.value == 0.0:
            continue  # negated (or a normal statement): no entity, no triple
        term = normalise(m.text)
        if len(term.split()) <= 3:
            present.append((m.start, term))
        if term != obs.lower() and len(term.split()) <= 3:
            suggest.append((term, obs.lower()))
        if term != obs.lower():
            present.append((m.start, obs.lower()))
    present.sort()
    for i, (pa, a) in enumerate(present):
        for pb, b in present[i + 1:]:
            if pb > pa and _CUE.search(sent[pa:pb]):
                suggest.append((a, b))
    anatomy = sorted({normalise(m.group(0)) for m in _ANAT.finditer(sent)})
    modifiers = sorted({_canon_modifier(m.group(0)) for m in _MOD.finditer(sent)})
    out.add_sentence(present, anatomy, modifiers, suggest)


@EXTRACTORS.register("rule")
class RuleExtractor:
    def __init__(self, cfg=None):
        self.cfg = cfg

    def __call__(self, report: str) -> Extraction:
        out = Extraction()
        for sent in _engine().sentences(report or ""):
            self.sentence(sent, out)
        return out

    def sentence(self, sent: str, out: Extraction) -> None:
        rule_sentence(sent, out)


_PAIR = re.compile(r"^\s*(finding|anatomy|modifier)\s*:\s*([a-z][a-z \-]{0,40}?)\s*$")


def parse_entity_list(text: str) -> Optional[dict[str, list[str]]]:
    """``finding: effusion; anatomy: left base`` -> by type; None when any item does not parse."""
    items = [s for s in re.split(r"[;\n]", text.strip().lower()) if s.strip()]
    if not items:
        return None
    out: dict[str, list[str]] = {"finding": [], "anatomy": [], "modifier": []}
    for it in items:
        m = _PAIR.match(it)
        if not m:
            return None
        out[m.group(1)].append(normalise(m.group(2)))
    return out


class _HFExtractor(RuleExtractor):
    """Shared by the model backends: a sentence whose model output fails to parse uses the rules."""

    def sentence(self, sent: str, out: Extraction) -> None:
        found = self.model_entities(sent)
        if found is None or not found["finding"]:
            out.fallbacks += found is None
            rule_sentence(sent, out)
            return
        # the model proposes entities; the labeler's negation scope still decides presence
        present = [(sent.find(f), f) for f in found["finding"] if not _negated(sent, f)]
        suggest = [(a, b) for i, (pa, a) in enumerate(present) for pb, b in present[i + 1:]
                   if 0 <= pa < pb and _CUE.search(sent[pa:pb])]
        out.add_sentence(sorted(present), sorted(set(found["anatomy"])), sorted(set(found["modifier"])), suggest)


def _negated(sent: str, term: str) -> bool:
    from shards.labeling.engine import span_value

    pos = sent.find(term)
    return pos >= 0 and span_value(_engine().RULES, sent, pos, pos + len(term))[0] == 0.0


@EXTRACTORS.register("hf_token")
class TokenClassExtractor(_HFExtractor):
    """A local token-classification directory; labels B-/I-FINDING, ANATOMY, MODIFIER (others ignored)."""

    def __init__(self, cfg):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        super().__init__(cfg)
        self.tok = AutoTokenizer.from_pretrained(cfg.extractor_dir, local_files_only=True)
        self.model = AutoModelForTokenClassification.from_pretrained(cfg.extractor_dir, local_files_only=True).eval()

    def model_entities(self, sent: str) -> Optional[dict[str, list[str]]]:
        import torch

        enc = self.tok(sent, return_offsets_mapping=True, return_tensors="pt", truncation=True, max_length=128)
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            pred = self.model(**enc).logits[0].argmax(-1).tolist()
        id2label = self.model.config.id2label
        spans: list[list] = []
        for (a, b), p in zip(offsets, pred):
            label = str(id2label.get(p, id2label.get(str(p), "O"))).upper()
            kind = label[2:].lower() if label[:2] in ("B-", "I-") else ""
            if b <= a or kind not in ("finding", "anatomy", "modifier"):
                continue
            if label.startswith("I-") and spans and spans[-1][0] == kind and a - spans[-1][2] <= 1:
                spans[-1][2] = b
            else:
                spans.append([kind, a, b])
        if any(not re.fullmatch(r"[a-z][a-z \-]{0,40}", sent[a:b].strip().lower()) for _, a, b in spans):
            return None
        out: dict[str, list[str]] = {"finding": [], "anatomy": [], "modifier": []}
        for kind, a, b in spans:
            out[kind].append(normalise(sent[a:b]))
        return out


@EXTRACTORS.register("hf_causal")
class CausalLMExtractor(_HFExtractor):
    """A local causal LM prompted with ``data.passes.kg.prompt``; greedy answer parsed by :func:`parse_entity_list`."""

    def __init__(self, cfg):
        from shards.passes.local_lm import LocalLM

        super().__init__(cfg)
        self.lm = LocalLM.get(cfg.extractor_dir, "data.passes.kg.extractor_dir")

    def model_entities(self, sent: str) -> Optional[dict[str, list[str]]]:
        return parse_entity_list(self.lm.complete(self.cfg.prompt.format(sentence=sent), 24))


def make_extractor(cfg):
    return EXTRACTORS.get(cfg.extractor, "data.passes.kg.extractor")(cfg)
