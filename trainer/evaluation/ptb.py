"""Pure-Python copy of the tokenisation pycocoevalcap 1.2 applies before scoring.

pycocoevalcap runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines
-lowerCase`` and then drops the tokens in :data:`PUNCTUATIONS`.  This module
re-implements the lexer rules that matter for report text, JFlex-style
(longest match wins, ties go to the earlier rule), measured against the jar:

* words keep inner hyphens (``left-sided``, ``2-3``, ``c5-6``), slashes
  (``s/p``, ``01/02/2012``, ``and/or``) and an inner ``.letter`` (the jar
  really emits ``process.findings`` for ``process.FINDINGS``);
* decimals split from a unit (``4.5cm`` -> ``4.5 cm``) but ``5mm`` stays one
  token; ``50%`` -> ``50 %``; ``-5`` keeps its sign;
* acronyms (``e.g.``, ``a.m.``), single-letter initials (``x.``) and a fixed
  abbreviation list (``vs.``, ``dr.``, ``etc.``, ``ct.``, months ...) keep
  their period; ``no.`` only before a number, ``Pa.`` only capitalised;
* clitics split: ``patient's`` -> ``patient 's``, ``don't`` -> ``do n't``,
  ``cannot`` -> ``can not``;
* brackets become ``-lrb-``/``-rrb-``/``-lsb-``/... and, because the
  toolkit lower-cases *before* filtering against the upper-case ``-LRB-``
  entries, they are **kept** as tokens (a quirk of the reference we copy);
* quotes, ``. , : ; ! ? - -- ...`` are dropped, but ``!!``/``?!`` runs are kept.

Known gaps (rare in reports): ``y'all``-type clitics, SGML entities,
URLs/e-mails, the full US-state abbreviation list, and CR characters (the
jar treats them as line breaks, which misaligns the reference itself).
"""
from __future__ import annotations

import re

# pycocoevalcap's tokenizer/ptbtokenizer.py list, verbatim in meaning.
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";"}

_ABBREV = set(
    "vs dr drs mr mrs ms st etc al seq inc co corp ltd jr sr lt rt col gen rev sgt capt ave prof sen rep "
    "dept univ ext est tel sq ph cf ct jan feb mar apr jun jul aug sep sept oct nov dec "
    "mon tue tues wed thu thurs fri".split()
)
_ABBREV_CAPITAL = {"pa"}  # kept only when written with a capital first letter (a US state)

_AL = r"[^\W_]"  # a letter or digit
_LE = r"[^\W\d_]"  # a letter
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_TRANSLATE = str.maketrans({"\u2013": "--", "\u2014": "--", "\u2015": "--", "\u00bd": "1/2",
                            "\u00bc": "1/4", "\u00be": "3/4", "\u201c": '"', "\u201d": '"',
                            "\u2018": "`", "\u2019": "'", "\u00a0": " ", "\t": " ", "\r": " "})

# (name, pattern); order breaks ties between equally long matches.
_RULES = [
    ("split_nt", re.compile(rf"{_AL}+?(?=n['\u2019]t(?!{_AL}))")),
    ("split_can", re.compile(r"(?i:can)(?=not(?![^\W_]))")),
    ("split_na", re.compile(r"(?i:gon|wan|got)(?=(?i:na|ta)(?![^\W_]))")),
    ("nt", re.compile(r"n['\u2019]t(?![^\W_])")),
    ("sgml", re.compile(r"</?[A-Za-z][^<>\s]*>")),
    ("acro", re.compile(rf"(?:{_LE}\.)+")),
    ("abbrev", re.compile(rf"{_LE}+\.")),
    ("worddot", re.compile(rf"{_LE}{_AL}*(?:[.!?]{_LE}{_AL}*)+")),
    ("thing", re.compile(rf"(?:[dDoOlL]'{_AL}{_AL}*|{_AL}+)(?:-(?:[dDoOlL]'{_AL})?{_AL}+)*")),
    ("slash", re.compile(rf"{_AL}+(?:-{_LE}+){{0,2}}(?:/{_AL}+(?:-{_LE}+){{0,2}}){{1,2}}")),
    ("number", re.compile(r"[+-]?(?:\d+(?:[.,:]\d+)*|[.,]\d+)")),
    ("redaux", re.compile(r"['\u2019](?:[sSmMdD]|re|ve|ll|RE|VE|LL)(?![^\W_])")),
    ("dots", re.compile(r"\.{3,5}")),
    ("excl", re.compile(r"[!?]+")),
    ("dashes", re.compile(r"-{2,}")),
    ("dquote", re.compile(r"''|``|\"")),
    ("runs", re.compile(r"\*+|#+|@+|_+")),
    ("other", re.compile(r"\S")),
]


def _accept(name: str, text: str, pos: int, end: int) -> bool:
    """Context checks the regexes cannot express (which abbreviations keep a period)."""
    if name == "abbrev":
        word = text[pos:end - 1]
        low = word.lower()
        if low in _ABBREV:
            return True
        if low in _ABBREV_CAPITAL:
            return word[0].isupper()
        if low == "no":
            return re.match(r"\s*\d", text[end:]) is not None
        return False
    if name == "acro":
        return end - pos >= 2
    return end > pos


def _normal_form(name: str, tok: str) -> str:
    if name == "dots":
        return "..."
    if name == "dashes":
        return "--"
    if name == "dquote":
        return "''"
    return _BRACKETS.get(tok, tok)


def ptb_tokens(text: str) -> list[str]:
    """Lower-cased PTB tokens of one caption, before punctuation removal."""
    text = text.replace("\n", " ").translate(_TRANSLATE)
    out: list[str] = []
    pos, n = 0, len(text)
    while pos < n:
        if text[pos].isspace():
            pos += 1
            continue
        best_name, best_end = "", pos
        for name, rx in _RULES:
            m = rx.match(text, pos)
            if m is None or not _accept(name, text, pos, m.end()):
                continue
            if name.startswith("split_"):  # JFlex trailing context: the lookahead counts as matched length
                best_name, best_end = name, m.end()
                break
            if m.end() > best_end:
                best_name, best_end = name, m.end()
        out.append(_normal_form(best_name, text[pos:best_end]).lower())
        pos = best_end
    return out


def tokenize(text: str) -> str:
    """What pycocoevalcap's PTBTokenizer returns for one caption: space-joined, punctuation removed."""
    return " ".join(t for t in ptb_tokens(text) if t not in PUNCTUATIONS)
