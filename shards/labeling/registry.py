"""Labeler registry, the label-value convention and input checks shared by every labeler.

A labeler is a callable ``labeler(reports: list[str]) -> list[dict[label, value]]`` with a
``label_set`` attribute naming the vocabulary it produces (``configs.labelsets.LABEL_SETS``:
``chexpert`` or ``padchest``).  Values: 1.0 positive, 0.0 negative, -1.0 uncertain, None blank.

Reports are checked before labelling (:func:`check_reports`): a null or non-string report is an
error naming its position, never labelled as the text "None".  Reports longer than
``max_chars`` are cut to that length and counted (:class:`Truncation`), so one pathological line
cannot stall scoring.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from configs.labelsets import get_label_set
from configs.schema import Registry

Labels = dict[str, Optional[float]]
LABELERS: Registry = Registry("report labeler")
DEFAULT_MAX_CHARS = 20_000  # ~5x the longest real chest X-ray report; METEOR breaks on 85 KB lines


class LabelInputError(ValueError):
    """Bad labeler input (missing file, non-JSON line, null report): one line naming file, line and field."""


@dataclass
class Truncation:
    """Reports cut to ``max_chars`` (count and original lengths), kept for the run summary."""
    max_chars: int = DEFAULT_MAX_CHARS
    count: int = 0
    longest: int = 0
    where: list[str] = field(default_factory=list)

    def cut(self, text: str, where: str = "") -> str:
        if len(text) <= self.max_chars:
            return text
        self.count += 1
        self.longest = max(self.longest, len(text))
        if len(self.where) < 10:
            self.where.append(where)
        return text[: self.max_chars]

    def summary(self) -> str:
        return (f"{self.count} report(s) longer than {self.max_chars} characters truncated "
                f"(longest {self.longest}; first at {', '.join(self.where)})") if self.count else ""


def check_reports(reports: list[Any], source: str = "reports") -> list[str]:
    """The reports as strings, or LabelInputError naming the first null / non-string one."""
    for i, r in enumerate(reports):
        if not isinstance(r, str):
            raise LabelInputError(f"{source}: item {i}: report is {type(r).__name__ if r is not None else 'null'}, "
                                  "expected a string")
    return list(reports)


def make_labeler(name: str, args: Optional[dict] = None, key: str = "eval.labeler"):
    """An instance of the registered labeler ``name`` (a ConfigError naming ``key`` when unknown)."""
    return LABELERS.get(name, key)(**(args or {}))


def resolve_labeler(labeler) -> Any:
    """A labeler instance from an instance, a registry name or None (the English rule labeler)."""
    if labeler is None:
        labeler = "rrg"
    return make_labeler(labeler) if isinstance(labeler, str) else labeler


def label_set_of(labeler) -> Any:
    """The :class:`configs.labelsets.LabelSet` a labeler instance declares."""
    return get_label_set(getattr(labeler, "label_set", "chexpert"), "labeler.label_set")
