"""Per-study topic rows for the HTML evaluation report (LLaVA-TA).

For a study card: one table row per topic that the reference or the generation has, in
ontology order, showing the topic, a thumbnail of the image with the topic's regions overlaid
(the same overlay as the card's image), the reference sentence (the rule decomposer on the raw
reference) and the generated sentence for that topic.  The overlay uses the mask channels the
model used for the topic (``channels`` in its trace rows: the export's ontology with
``model.options.region_channels``), else the built-in region table.  ``study_card`` callers append
``topic_rows_html(sample)`` when a sample carries per-topic output (``trace`` / ``topic_rows``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from shards.passes.topics.ontology import Ontology
from trainer.evaluation.report_html import _esc, _png_data_uri, overlay_image
from shards.passes.topics.decompose import decompose
from trainer.evaluation.topic_scoring import generated_rows

THUMB = 96
CSS = (".topics{border-collapse:collapse;margin:6px 0;font-size:13px}.topics td,.topics th{border-top:1px solid #ddd;"
       "padding:3px 6px;vertical-align:top;text-align:left}.topics img{width:%dpx}.topics .miss{color:#b00}" % THUMB)


def topic_rows_html(sample: dict[str, Any], onto: Ontology | None = None) -> str:
    onto = onto or Ontology()
    ref = {r["topic"]: r["sentence"] for r in decompose(sample.get("reference", ""))[0]}
    gen = generated_rows(sample)
    used = _trace_channels(sample)
    image, masks, channels = sample.get("image"), sample.get("masks"), list(sample.get("mask_channels") or [])
    rows = []
    names = onto.names + [t for t in gen if t not in onto.by_name]  # a model ontology's own topics too
    for topic in [t for t in names if t in ref or t in gen]:
        cell = ""
        wanted = used.get(topic) or (onto.channels(topic) if topic in onto.by_name else [])
        if image is not None and masks is not None and wanted and all(c in channels for c in wanted):
            region = np.any(masks[[channels.index(c) for c in wanted]], axis=0)[None]
            cell = f'<img alt="{_esc(topic)} regions" src="{_png_data_uri(overlay_image(image, region))}">'
        r, g = ref.get(topic), gen.get(topic)
        rows.append(f'<tr data-topic="{_esc(topic)}"><td>{_esc(topic)}</td><td>{cell}</td>'
                    f'<td class="{"" if r else "miss"}">{_esc(r or "(not in reference)")}</td>'
                    f'<td class="{"" if g else "miss"}">{_esc(g or "(not generated)")}</td></tr>')
    return (f'<style>{CSS}</style><table class="topics"><tr><th>topic</th><th>regions</th><th>reference</th>'
            f'<th>generated</th></tr>{"".join(rows)}</table>')


def _trace_channels(sample: dict[str, Any]) -> dict[str, list[str]]:
    import json

    rows = sample.get("topic_rows")
    if rows is None and sample.get("trace"):
        rows = json.loads(sample["trace"])
    return {r["topic"]: list(r["channels"]) for r in rows or [] if r.get("channels")}
