"""Reasoning chains as text: the perception tree, the template chain and its reflection variant,
final-report extraction and the training targets.  Pure functions of their arguments.

A chain has four modules, in order, each opened by a ``Thinking:`` sentence and a header::

    Thinking: ...            Knowledge:            (ontology text for the organs described, never the study's labels)
    Thinking: ...            Perception:           (one line per described organ: "- Organ (condition): text")
    Thinking: ...            Fine-grained report:  (the described organs' sentences, organ by organ)
    Thinking: ...            Final report:         (the report itself)

The reflection variant corrupts one organ's perception line (another condition of the same
organ from the tree, chosen by a seeded rule), then adds a ``Reflection:`` sentence and the
corrected line.  The corrupted line's character offsets are recorded so the loss can skip it.
"""
from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Any, Iterable, Optional

import numpy as np

from shards.reasoning.ontology import NORMAL, ONTOLOGY, conditions, organ_sentences

HEADERS = ("Knowledge:", "Perception:", "Fine-grained report:", "Final report:")
THINKING = (
    "Thinking: First I recall what can be found in each organ of a chest radiograph.",
    "Thinking: Next I describe what I see in each organ, following the perception tree.",
    "Thinking: Now I gather these perceptions into a fine-grained report.",
    "Thinking: Finally I write the report.",
)
REFLECTION = "Reflection: Looking at the {organ} again, that description does not fit the image; I correct it."
_FINAL = re.compile(r"^Final report:[ \t]*\n?", re.MULTILINE)


# ----------------------------------------------------------------------------- perception tree
def sentence_counts(reports: Iterable[str]) -> Counter:
    """(organ, condition, sentence) -> how many reports hold it (the tree's raw material)."""
    counts: Counter = Counter()
    for report in reports:
        for organ, items in organ_sentences(report).items():
            for cond, sent in set(items):
                counts[(organ, cond, sent)] += 1
    return counts


def build_tree(counts: Counter, max_examples: int) -> dict[str, Any]:
    """organ -> condition -> {"count", "examples"}: every ontology condition, most frequent sentences first."""
    tree: dict[str, Any] = {o: {c: {"count": 0, "examples": []} for c in conditions(o)} for o in ONTOLOGY}
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    for (organ, cond, sent), n in ranked:
        node = tree[organ][cond]
        node["count"] += n
        if len(node["examples"]) < max_examples:
            node["examples"].append(sent)
    return tree


# ----------------------------------------------------------------------------- template chain
def _line(organ: str, conds: list[str], text: str) -> str:
    return f"- {organ.capitalize()} ({', '.join(conds)}): {text}"


def perception_lines(report: str) -> list[tuple[str, list[str], str]]:
    """(organ, its conditions (abnormal first), description) for every organ the findings describe."""
    out = []
    for organ, items in organ_sentences(report).items():
        conds = list(dict.fromkeys(c for c, _ in items if c != NORMAL)) or [NORMAL]
        out.append((organ, conds, " ".join(s for _, s in items)))
    return out


def _seeded_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def choose_corruption(lines: list[tuple[str, list[str], str]], tree: dict, seed: int,
                      key: str) -> Optional[tuple[int, str, str]]:
    """Seeded rule: (line index, other condition, its tree example) or None when no organ can be corrupted.

    Candidates are described organs whose tree holds another condition with an example sentence;
    the organ, then the condition, then the example are drawn from ``rng(seed, crc32(key))``.
    """
    cands = []
    for i, (organ, conds, _) in enumerate(lines):
        others = [c for c, node in tree.get(organ, {}).items() if c not in conds and node["examples"]]
        if others:
            cands.append((i, others))
    if not cands:
        return None
    rng = _seeded_rng(seed, key)
    i, others = cands[int(rng.integers(len(cands)))]
    cond = others[int(rng.integers(len(others)))]
    examples = tree[lines[i][0]][cond]["examples"]
    return i, cond, examples[int(rng.integers(len(examples)))]


def _modules(knowledge: str, perception: str, fine: str, final: str) -> str:
    bodies = (knowledge, perception, fine, final)
    return "\n\n".join(f"{t}\n{h}\n{b}" for t, h, b in zip(THINKING, HEADERS, bodies))


def template_chain(report: str, tree: dict, seed: int, key: str) -> dict[str, Any]:
    """The overlay entry of one study: ``reasoning``, ``reflection`` (or None) and the corrupted span."""
    lines = perception_lines(report)
    # knowledge for the organs the findings describe, from the ontology (never the study's labels)
    knowledge = "\n".join(f"- {o.capitalize()}: {ONTOLOGY[o]['knowledge']}" for o, _, _ in lines) or \
        "- No organ of the ontology is described."
    plain = [_line(o, c, t) for o, c, t in lines]
    fine = " ".join(f"{o.capitalize()}: {t}" for o, _, t in lines) or "No organ is described."
    final = report.strip()
    entry: dict[str, Any] = {"reasoning": _modules(knowledge, "\n".join(plain) or "- No organ is described.",
                                                   fine, final),
                             "final_report": final, "reflection": None, "corrupt_span": None, "corruption": None}
    pick = choose_corruption(lines, tree, seed, key)
    if pick is None:
        return entry
    i, cond, example = pick
    organ = lines[i][0]
    wrong = _line(organ, [cond], example)
    before = "\n".join(plain[:i] + [""]) if i else ""
    after = "\n".join([""] + plain[i + 1:]) if i + 1 < len(plain) else ""
    fix = f"{REFLECTION.format(organ=organ)}\n{plain[i]}"
    perception = f"{before}{wrong}{after}\n{fix}"
    text = _modules(knowledge, perception, fine, final)
    head = text.index(HEADERS[1]) + len(HEADERS[1]) + 1 + len(before)
    assert text[head:head + len(wrong)] == wrong
    entry.update(reflection=text, corrupt_span=[head, head + len(wrong)],
                 corruption={"organ": organ, "from": lines[i][1], "to": cond})
    return entry


# ----------------------------------------------------------------------------- reading chains
def parse_chain(text: str) -> Optional[dict[str, str]]:
    """The four module bodies of a well-formed chain (headers in order, final report non-empty), else None."""
    pos, bodies = 0, {}
    starts = []
    for h in HEADERS:
        m = re.compile(rf"^{re.escape(h)}[ \t]*$", re.MULTILINE).search(text, pos)
        if m is None:
            return None
        starts.append((h, m.start(), m.end()))
        pos = m.end()
    for j, (h, _, end) in enumerate(starts):
        stop = starts[j + 1][1] if j + 1 < len(starts) else len(text)
        body = text[end:stop].strip()
        bodies[h.rstrip(":").lower()] = re.sub(r"\n*Thinking:[^\n]*$", "", body).strip()
    return bodies if bodies["final report"] else None


def extract_final_report(chain: str) -> tuple[str, bool]:
    """(report to score, fell_back): the text after the last ``Final report:`` header, or else
    the chain's last non-empty paragraph (``fell_back`` True, counted by the caller)."""
    found = list(_FINAL.finditer(chain))
    if found:
        text = chain[found[-1].end():].strip()
        if text:
            return text, False
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", chain) if p.strip()]
    return (paragraphs[-1] if paragraphs else ""), True


TARGETS = ("report", "reasoning", "reflection")


def target_text(report: str, annotation: Optional[dict], target: str,
                include_corrupt: bool = False) -> tuple[Optional[str], list[tuple[int, int]]]:
    """(text to learn, character spans at zero loss weight) for one study and target field.

    ``report`` needs no annotation; ``reasoning``/``reflection`` return (None, []) when the study
    has no such entry (the lvmed_r2 builder raises for a study without an overlay entry, and trains
    an entry without a reflection variant on its reasoning chain).  The corrupted span of a
    reflection chain is excluded unless ``include_corrupt``.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {list(TARGETS)}")
    if target == "report":
        return report.strip(), []
    text = (annotation or {}).get(target)
    if not text:
        return None, []
    span = (annotation or {}).get("corrupt_span") if target == "reflection" else None
    return text, ([] if include_corrupt or not span else [(int(span[0]), int(span[1]))])
