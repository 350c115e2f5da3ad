"""Family-level evaluation hooks, by name: extra scores for metrics.json and extra HTML per study card.

A model family names the hooks it wants (``ModelFamily.extra_scores`` / ``report_rows``, at the
``modeling`` floor, which cannot import scoring code); the implementations live here, at the
``trainer`` floor, in two registries.  The evaluator calls whatever the family names, so it never
branches on a family's name.

* score hook: ``records -> dict`` (records as in predictions.jsonl, with ``trace``); scalar
  values go into metrics.json under their own keys, nested ones (e.g. ``per_topic``) too;
* row hook: ``sample -> str`` (an HTML fragment appended to the study's card; the sample is a
  record plus ``image``, ``masks``, ``mask_channels``).
"""
from __future__ import annotations

from typing import Any, Callable

from configs.schema import Registry

SCORE_HOOKS: Registry[Callable[[list[dict]], dict[str, Any]]] = Registry("evaluation score hook")
ROW_HOOKS: Registry[Callable[[dict], str]] = Registry("evaluation report-row hook")


@SCORE_HOOKS.register("topic_scores")
def _topic_scores(records: list[dict]) -> dict[str, Any]:
    from trainer.evaluation.topic_scoring import topic_scores

    return topic_scores(records)


@ROW_HOOKS.register("topic_rows")
def _topic_rows(sample: dict) -> str:
    from trainer.evaluation.topic_html import topic_rows_html

    return topic_rows_html(sample)


@SCORE_HOOKS.register("reflection_stats")
def _reflection_stats(records: list[dict]) -> dict[str, Any]:
    from trainer.evaluation.reflection_stats import reflection_stats

    return reflection_stats(records)


@ROW_HOOKS.register("reflection_rows")
def _reflection_rows(sample: dict) -> str:
    from trainer.evaluation.reflection_stats import reflection_rows_html

    return reflection_rows_html(sample)


SECTION_HOOKS: Registry[Callable[[str, list[dict]], str]] = Registry("evaluation report-section hook")


@SECTION_HOOKS.register("reflection_section")
def _reflection_section(name: str, records: list[dict]) -> str:
    from trainer.evaluation.reflection_stats import reflection_section_html

    return reflection_section_html(name, records)


def sections_html(family, runs: dict[str, list[dict]]) -> str:
    """The family's report sections (``report_sections``), one per eval run (headline + variants)."""
    return "".join(SECTION_HOOKS.get(name, f"family {family.name} report_sections")(run, recs)
                   for name in getattr(family, "report_sections", ()) for run, recs in runs.items())


def extra_scores(family, records: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in family.extra_scores:
        out.update(SCORE_HOOKS.get(name, f"family {family.name} extra_scores")(records))
    return out


def card_html(family, sample: dict) -> str:
    return "".join(ROW_HOOKS.get(name, f"family {family.name} report_rows")(sample) for name in family.report_rows)
