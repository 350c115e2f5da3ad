"""Language-independent mention / negation / uncertainty engine shared by the rule labelers.

A :class:`RuleSet` holds compiled patterns; :func:`sentence_mentions` labels one sentence:

1. **Mentions**: every match of an observation's phrase pattern (``mentions``); ``normals``
   are explicit negative mentions ("heart size is normal").
2. **Triggers** are found once per sentence with one alternation, in priority order:
   ``pseudo`` (looks like negation but is not: "no change in", "not only") < ``unc``
   (hedges: "may represent", "concerning for", "cannot exclude", "versus") < ``neg``
   ("no", "without", "free of", "resolution of").  A mention takes the value of the nearest
   trigger that ends before the mention ends, unless a scope break (``breaks``: "but",
   "however", a comma that opens a new phrase, a verb closing the negated phrase) lies
   between them or it is more than ``max_scope`` characters away.  Scope runs through
   coordinated lists with adjectives and quantifiers ("no focal consolidation,
   pneumothorax, or large pleural effusion" negates all three).
3. **Post-triggers** after the mention, up to the next break ("... has resolved",
   "... cannot be excluded", "... versus scarring"), override the pre-trigger.

Every step is linear in the sentence length: triggers and breaks are scanned once, each
mention finds its trigger and break by binary search, and post-triggers look only at a
bounded window.  Each mention carries the trigger text and rule that decided it
(``rrg label --explain``).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Optional, Pattern

VALUE_NAMES = {1.0: "positive", 0.0: "negative", -1.0: "uncertain", None: "blank"}
POST_WINDOW = 120  # characters after a mention searched for a post-trigger


@dataclass(frozen=True)
class RuleSet:
    mentions: dict[str, Pattern]
    normals: dict[str, Pattern]
    triggers: Pattern  # named groups: pseudo, unc, neg
    breaks: Pattern
    neg_post: Pattern
    unc_post: Pattern
    max_scope: int = 200
    keys: Optional[dict[str, tuple[str, ...]]] = None  # per label: substrings one of which any mention contains
    list_closer: Optional[Pattern] = None  # "or" / ", and": an adjective after a comma continues such a list


@dataclass(frozen=True)
class Mention:
    label: str
    start: int
    end: int
    text: str
    value: float
    rule: str  # e.g. "pre-negation 'no'", "post-uncertainty 'cannot be excluded'", "affirmed"


def _triggers(rules: RuleSet, sent: str) -> tuple[list[int], list[tuple[int, int, float, str, str]]]:
    found = []
    for m in rules.triggers.finditer(sent):
        kind = m.lastgroup or "neg"
        value = {"pseudo": 1.0, "unc": -1.0, "neg": 0.0}[kind]
        found.append((m.end(), m.start(), value, kind, m.group()))
    found.sort()
    return [t[0] for t in found], found


def _breaks(rules: RuleSet, sent: str) -> tuple[list[int], list[int]]:
    """Scope breaks.  A comma + adjective (group ``adj``) breaks ("no effusion, small pneumothorax")
    unless the list is closed by "or" / ", and" before the next break ("no consolidation, large
    effusion, or pneumothorax"): then it is one coordinated, negated list."""
    matches = list(rules.breaks.finditer(sent))
    closers = [m.start() for m in rules.list_closer.finditer(sent)] if rules.list_closer else []
    spans = []
    for i, m in enumerate(matches):
        if m.lastgroup == "adj" and closers:
            nxt = matches[i + 1].start() if i + 1 < len(matches) else len(sent)
            k = bisect.bisect_left(closers, m.end())
            if k < len(closers) and closers[k] < nxt:
                continue
        spans.append((m.start(), m.end()))
    return [s for s, _ in spans], [e for _, e in spans]


def _pre(rules, sent, start, end, trig_ends, trigs, brk_starts, brk_ends) -> tuple[float, str]:
    i = bisect.bisect_right(trig_ends, end) - 1  # the nearest trigger ending inside or before the mention
    if i < 0:
        return 1.0, "affirmed"
    t_end, t_start, value, kind, text = trigs[i]
    if start - t_end > rules.max_scope:
        return 1.0, f"affirmed (trigger '{text}' out of scope)"
    j = bisect.bisect_right(brk_ends, start) - 1  # the last break ending before the mention
    if j >= 0 and brk_starts[j] >= t_end:
        return 1.0, f"affirmed (scope of '{text}' ends at '{sent[brk_starts[j]:brk_ends[j]].strip()}')"
    name = {"pseudo": "pseudo-negation", "unc": "pre-uncertainty", "neg": "pre-negation"}[kind]
    return value, f"{name} '{text}'"


def _post(rules: RuleSet, sent: str, end: int, brk_starts: list[int]) -> Optional[tuple[float, str]]:
    k = bisect.bisect_left(brk_starts, end)
    stop = min(len(sent), end + POST_WINDOW, brk_starts[k] if k < len(brk_starts) else len(sent))
    window = sent[end:stop]
    for rx, value, name in ((rules.unc_post, -1.0, "post-uncertainty"), (rules.neg_post, 0.0, "post-negation")):
        m = rx.search(window)
        if m and _coordinated(m):
            return value, f"{name} '{m.group().strip()}'"
    return None


def _coordinated(m) -> bool:
    """A post-trigger reaches back over a comma only through a coordinated list ("X, Y and Z have
    resolved"), not into another clause ("chest tube in place, pneumothorax has resolved")."""
    words = m.groupdict().get("w") or ""
    return "," not in words or re.search(r"\b(?:and|or|nor)\b", words) is not None


def span_value(rules: RuleSet, sent: str, start: int, end: int) -> tuple[float, str]:
    """(value, rule) of the words ``sent[start:end]`` as if they were a mention: the same scope rules.

    Words that are themselves part of a negation trigger ("no", "without") are negative.
    """
    trig_ends, trigs = _triggers(rules, sent)
    for t_end, t_start, value, kind, text in trigs:
        if kind == "neg" and t_start < end and start < t_end:
            return 0.0, f"part of the negation '{text}'"
    brk_starts, brk_ends = _breaks(rules, sent)
    post = _post(rules, sent, end, brk_starts)
    return post if post else _pre(rules, sent, start, end, trig_ends, trigs, brk_starts, brk_ends)


def sentence_mentions(rules: RuleSet, sent: str) -> list[Mention]:
    """Every mention in one (lower-cased) sentence with its value and the rule that set it."""
    out: list[Mention] = []
    normal_labels = set()
    keys = _key_patterns(rules)

    def may_mention(label: str) -> bool:  # a literal search is far cheaper than the mention regex
        k = keys.get(label)
        return k is None or k.search(sent) is not None

    for label, rx in rules.normals.items():
        if not may_mention(label):
            continue
        for m in rx.finditer(sent):
            normal_labels.add(label)
            out.append(Mention(label, m.start(), m.end(), m.group(), 0.0, "normal statement"))
    trig_ends, trigs = _triggers(rules, sent)
    brk_starts, brk_ends = _breaks(rules, sent)
    for label, rx in rules.mentions.items():
        if label in normal_labels or not may_mention(label):
            continue
        for m in rx.finditer(sent):
            post = _post(rules, sent, m.end(), brk_starts)
            value, rule = post if post else _pre(rules, sent, m.start(), m.end(), trig_ends, trigs,
                                                 brk_starts, brk_ends)
            out.append(Mention(label, m.start(), m.end(), m.group(), value, rule))
    return out


_KEY_CACHE: dict[int, dict[str, Pattern]] = {}


def _key_patterns(rules: RuleSet) -> dict[str, Pattern]:
    if id(rules) not in _KEY_CACHE:
        _KEY_CACHE[id(rules)] = {label: re.compile("|".join(map(re.escape, words)))
                                 for label, words in (rules.keys or {}).items()}
    return _KEY_CACHE[id(rules)]


_RANK = {1.0: 3, -1.0: 2, 0.0: 1, None: 0}


def aggregate(labels: dict, mentions: list[Mention]) -> None:
    """Per label: positive beats uncertain beats negative beats blank (the CheXpert labeler's rule)."""
    for mention in mentions:
        if _RANK[mention.value] > _RANK[labels[mention.label]]:
            labels[mention.label] = mention.value


def compile_alternatives(patterns: list[str]) -> Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns))
