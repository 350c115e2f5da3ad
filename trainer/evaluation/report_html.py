"""One self-contained HTML page per evaluation: metric table, per-label F1 chart, browsable studies.

``write_report(out_dir, metrics=..., baselines=..., ablations=..., samples=...)`` writes
``out_dir/report.html``.  The page opens offline: CSS is inline, images are base64 PNG data URIs,
the chart is inline SVG, and the only script is a few inline lines for the "disagreements only"
filter.  Every piece of report text, id and name is ``html.escape``-d (reports can contain anything).

Metric dicts are the flat ``metrics.json`` of :func:`trainer.evaluation.scoring.score`.  A study card shows
the image with its masks overlaid (the overlay of ``rrg shards inspect``), the reference and
generated reports side by side, and chips for the labels on which they disagree:

* a red chip when the positive status differs (this changes the clinical-efficacy scores);
* an amber chip when only uncertainty differs (one side -1, the other 0 or blank).
  0 vs blank is not shown: the scoring convention treats both as negative.

Sentences that mention a disagreeing observation are highlighted in both reports.
"""
from __future__ import annotations

import base64
import html
import io
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from shards.inspect import PALETTE, _overlay
from configs.labelsets import CHEXPERT_LABELS
from shards.labeling import label_sentence_mentions, sentences

METRIC_ROWS = [("BLEU-1", "bleu_1"), ("BLEU-2", "bleu_2"), ("BLEU-3", "bleu_3"), ("BLEU-4", "bleu_4"),
               ("METEOR", "meteor"), ("ROUGE-L", "rouge_l"), ("CIDEr", "cider")] + [
    (f"CE {avg} {m[0].upper()} ({k})", f"ce_{avg}_{m}_{k}") for k in ("14", "5") for avg in ("micro", "macro")
    for m in ("precision", "recall", "f1")] + [
    (f"CE+ {avg} F1 ({k})", f"ce_plus_{avg}_f1_{k}") for k in ("14", "5") for avg in ("micro", "macro")] + [
    ("ROUGE-1 (rouge_score)", "rouge_1"), ("ROUGE-2 (rouge_score)", "rouge_2"), ("ROUGE-L F1 (rouge_score)", "rouge_l_f1"),
    ("RadGraph simple", "radgraph_simple_f1"), ("RadGraph partial (F1-RadGraph)", "radgraph_partial_f1"),
    ("RadGraph complete", "radgraph_complete_f1"), ("RadGraph combined (ReXrank)", "radgraph_combined_f1"),
    ("BERTScore F1 (ReXrank)", "bertscore_f1"), ("BERTScore F1 (LLaVA-Rad)", "bertscore_llava_rad_f1"),
    ("SembScore", "semb_score"), ("RadCliQ-v1 (lower is better)", "radcliq_v1"), ("1/RadCliQ-v1", "radcliq_v1_inv"),
    ("GREEN", "green")]
IMAGE_MAX = 384  # longest side of an embedded study image, px
SERIES_COLOURS = ["#1f5fbf", "#9a9a9a", "#e08a1e", "#3c9a4a", "#8e44ad", "#c0392b"]
_SYMBOL = {1.0: "+", 0.0: "\u2212", -1.0: "?", None: "\u00b7"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{margin:0 0 4px;font-size:24px} h2{margin:28px 0 10px;font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:2px 0} .conv{color:#666;font-size:12px;max-width:1100px}
table.metrics{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums}
table.metrics th,table.metrics td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
table.metrics th:first-child,table.metrics td:first-child{text-align:left}
table.metrics thead th{background:#f0f2f5} td.model{font-weight:600}
tr.loses td.model{background:#fde2e0;color:#9b1c12} td.best-baseline{outline:2px solid #d9534f;outline-offset:-2px}
.ci{color:#777;font-weight:400;font-size:12px} .delta-neg{color:#b3261e} .delta-pos{color:#1e7b34}
.na{color:#999;font-style:italic;white-space:normal}
.legend span,.masks span{display:inline-block;margin:0 12px 4px 0}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px;margin:0 0 16px;display:flex;gap:16px}
.card .img{flex:0 0 320px} .card img{width:320px;height:auto;display:block;border-radius:4px;margin-bottom:6px}
.card .body{flex:1 1 auto;min-width:0} .card h3{margin:0 0 6px;font-size:15px}
.reports{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.reports h4{margin:4px 0;font-size:13px;color:#555;text-transform:uppercase;letter-spacing:.04em}
.report{white-space:pre-wrap;background:#f6f7f9;border-radius:4px;padding:8px;font-size:13px;overflow-wrap:anywhere}
mark.dis{background:#ffd8d2;color:inherit;border-radius:2px}
.chip{display:inline-block;border-radius:12px;padding:1px 9px;margin:0 6px 6px 0;font-size:12px;font-weight:600}
.chip.major{background:#fde2e0;color:#9b1c12;border:1px solid #e7a49c}
.chip.minor{background:#fff1d6;color:#8a5a00;border:1px solid #e8c57a}
.agree{color:#1e7b34;font-size:12px} .noimg{color:#999;font-style:italic;width:200px}
body.only-dis .card[data-disagree="0"]{display:none}
"""
_JS = ("document.getElementById('only-dis').addEventListener('change',"
       "function(e){document.body.classList.toggle('only-dis',e.target.checked);});")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(metrics: dict, key: str) -> Optional[float]:
    v = metrics.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def label_key(label: str) -> str:
    """Per-label F1 key of a CheXpert label in the flat metrics dict (as trainer.evaluation.scoring writes it)."""
    return f"ce_f1_{label.lower().replace(' ', '_')}"


# ---------------------------------------------------------------- metric table
def _value_cell(metrics: dict, key: str, cls: str = "") -> str:
    v = _num(metrics, key)
    if v is None:
        text = metrics.get(f"{key}_status", "not computed" if key == "meteor" else "n/a")
        return f'<td class="na {cls}">{_esc(text)}</td>'
    lo, hi = _num(metrics, f"{key}_ci_low"), _num(metrics, f"{key}_ci_high")
    ci = f' <span class="ci">[{lo:.2f}, {hi:.2f}]</span>' if lo is not None and hi is not None else ""
    return f'<td class="{cls}">{v:.3f}{ci}</td>'


def _delta_cell(metrics: dict, model: dict, key: str) -> str:
    cell = _value_cell(metrics, key)
    v, m = _num(metrics, key), _num(model, key)
    if v is None or m is None:
        return cell
    d = v - m
    cls = "delta-neg" if d < 0 else "delta-pos"
    return cell[:-5] + f' <span class="{cls}">({d:+.3f})</span></td>'


def metric_table(metrics: dict, baselines: dict[str, dict], ablations: dict[str, dict],
                 variants: Optional[dict[str, dict]] = None) -> str:
    """Rows = metrics, columns = model, baselines, ablations and the family's eval variants (delta vs model).

    A row gets class ``loses`` when some baseline scores at least as well as the model; the best
    baseline cell of that row is outlined."""
    head = ["<th>metric</th>", "<th>model</th>"]
    head += [f"<th>{_esc(name)}</th>" for name in baselines]
    head += [f'<th>{_esc(name)}<br><span class="ci">ablation, \u0394 vs model</span></th>' for name in ablations]
    variants = variants or {}
    head += [f'<th>{_esc(name)}<br><span class="ci">variant, \u0394 vs model</span></th>' for name in variants]
    rows = []
    for label, key in METRIC_ROWS:
        m = _num(metrics, key)
        scored = {n: _num(b, key) for n, b in baselines.items()}
        scored = {n: v for n, v in scored.items() if v is not None}
        best = max(scored, key=scored.get) if scored else None
        loses = m is not None and best is not None and scored[best] >= m
        cells = [f"<td>{_esc(label)}</td>", _value_cell(metrics, key, "model")]
        cells += [_value_cell(b, key, "best-baseline" if loses and n == best else "") for n, b in baselines.items()]
        cells += [_delta_cell(a, metrics, key) for a in ablations.values()]
        cells += [_delta_cell(v, metrics, key) for v in variants.values()]
        cls = ' class="loses"' if loses else ""
        rows.append(f'<tr data-metric="{key}"{cls}>{"".join(cells)}</tr>')
    return (f'<table class="metrics"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


# ---------------------------------------------------------------- per-label chart
def f1_chart(series: dict[str, dict], labels: list[str] = CHEXPERT_LABELS) -> str:
    """Grouped horizontal bars of per-label F1, one ``rect.bar`` per (label, series); missing = 0."""
    names = list(series)
    bar_h, gap, left, width = 9, 8, 200, 560
    group_h = bar_h * len(names) + gap
    height = group_h * len(labels) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="f1chart" width="{left + width + 70}" '
             f'height="{height}" role="img" aria-label="per-label F1">']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + t * width
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 22}" stroke="#e3e3e3"/>'
                     f'<text x="{x:.1f}" y="{height - 8}" font-size="11" text-anchor="middle" fill="#666">{t:g}</text>')
    for i, label in enumerate(labels):
        y0 = i * group_h + gap / 2
        parts.append(f'<text x="{left - 8}" y="{y0 + bar_h * len(names) / 2 + 4:.1f}" font-size="12" '
                     f'text-anchor="end" fill="#222">{_esc(label)}</text>')
        for j, name in enumerate(names):
            v = _num(series[name], label_key(label))
            colour = SERIES_COLOURS[j % len(SERIES_COLOURS)]
            w = max(0.0, min(1.0, v or 0.0)) * width
            tip = f"{label} \u2013 {name}: " + ("n/a" if v is None else f"{v:.3f}")
            parts.append(f'<rect class="bar" data-label="{_esc(label)}" data-series="{_esc(name)}" '
                         f'x="{left}" y="{y0 + j * bar_h:.1f}" width="{w:.1f}" height="{bar_h - 1}" '
                         f'fill="{colour}"><title>{_esc(tip)}</title></rect>')
    parts.append("</svg>")
    legend = "".join(f'<span><i class="sw" style="background:{SERIES_COLOURS[j % len(SERIES_COLOURS)]}"></i>'
                     f'{_esc(n)}</span>' for j, n in enumerate(names))
    return f'<div class="legend">{legend}</div>{"".join(parts)}'


# ---------------------------------------------------------------- study cards
def _png_data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlay_image(image: np.ndarray, masks: Optional[np.ndarray]) -> Image.Image:
    """The study image with masks overlaid, scaled so its longest side is at most IMAGE_MAX."""
    view = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if masks is not None and masks.shape[1:] != (view.height, view.width):  # masks at another resolution
        masks = np.stack([np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
            (view.width, view.height), Image.Resampling.NEAREST)) > 127 for m in masks])
    out = _overlay(view, None if masks is None else masks.astype(bool))
    scale = IMAGE_MAX / max(out.size)
    if scale < 1:
        out = out.resize((round(out.width * scale), round(out.height * scale)), Image.Resampling.LANCZOS)
    return out


def _label_set(metrics: dict):
    from configs.labelsets import LABEL_SETS

    name = metrics.get("label_set", "chexpert")
    return LABEL_SETS.get(name if name in LABEL_SETS else "chexpert")


def disagreements(ref: dict, gen: dict) -> list[tuple[str, str]]:
    """(label, "major"|"minor") for labels whose positive status (major) or uncertainty (minor) differs."""
    out = []
    for label in (list(ref) or CHEXPERT_LABELS):  # the labeler's own label set (CheXpert or PadChest)
        r, g = ref.get(label), gen.get(label)
        if (r == 1.0) != (g == 1.0):
            out.append((label, "major"))
        elif (r == -1.0) != (g == -1.0):
            out.append((label, "minor"))
    return out


_SPLIT = re.compile(r"((?<!\d)\.(?!\d)|;|\?|\n)")


def highlight(report: str, labels: set[str]) -> str:
    """Escaped report text with sentences mentioning any of ``labels`` wrapped in ``<mark class="dis">``."""
    pieces = _SPLIT.split(report)
    out = []
    for k in range(0, len(pieces), 2):
        text, delim = pieces[k], pieces[k + 1] if k + 1 < len(pieces) else ""
        mentioned = {obs for s in sentences(text) for obs in label_sentence_mentions(s)} & labels
        if mentioned and text.strip():
            lead = len(text) - len(text.lstrip())
            inner, tail = (text[lead:], delim) if delim == "\n" else (text[lead:] + delim, "")
            out.append(f'{_esc(text[:lead])}<mark class="dis" title="{_esc(", ".join(sorted(mentioned)))}">'
                       f'{_esc(inner)}</mark>{tail}')
        else:
            out.append(_esc(text + delim))
    return "".join(out)


def study_card(sample: dict) -> str:
    ref_l, gen_l = sample.get("ref_labels") or {}, sample.get("gen_labels") or {}
    dis = disagreements(ref_l, gen_l)
    chips = "".join(f'<span class="chip {kind}" data-label="{_esc(label)}">{_esc(label)}: ref '
                    f'{_SYMBOL.get(ref_l.get(label), "?")} / gen {_SYMBOL.get(gen_l.get(label), "?")}</span>'
                    for label, kind in dis) or '<span class="agree">labels agree</span>'
    image, masks = sample.get("image"), sample.get("masks")
    if image is None:
        img_html = '<div class="noimg">no image</div>'
    else:
        img_html = f'<img alt="study image" src="{_png_data_uri(overlay_image(image, masks))}">'
        if masks is not None:
            names = list(sample.get("mask_channels") or [f"mask {c}" for c in range(len(masks))])
            img_html += '<div class="masks">' + "".join(
                f'<span><i class="sw" style="background:rgb{PALETTE[c % len(PALETTE)]}"></i>{_esc(n)}</span>'
                for c, n in enumerate(names)) + "</div>"
    flagged = {label for label, _ in dis}
    return (f'<div class="card" data-id="{_esc(sample.get("id", ""))}" data-disagree="{int(bool(dis))}">'
            f'<div class="img">{img_html}</div><div class="body"><h3>{_esc(sample.get("id", ""))}</h3>'
            f'<div class="chips">{chips}</div><div class="reports">'
            f'<div><h4>reference</h4><div class="report ref">{highlight(sample.get("reference", ""), flagged)}</div></div>'
            f'<div><h4>generated</h4><div class="report gen">{highlight(sample.get("generated", ""), flagged)}</div></div>'
            f'</div>{scores_line(sample)}{sample.get("card_html", "")}{trace_block(sample)}</div></div>')


def scores_line(sample: dict) -> str:
    """The study's own values of the per-study metrics (RadGraph, BERTScore, GREEN ...), when scored."""
    scores = sample.get("scores") or {}
    cells = [f"{_esc(k)} {v:.3f}" for k, v in scores.items() if isinstance(v, (int, float))]
    sep = " \u00b7 "
    return f'<p class="meta scores">{sep.join(cells)}</p>' if cells else ""


def narrative_section(rows: list[dict]) -> str:
    """The narrative-bias table (one row per K) and its curve: real-image gain per metric against K."""
    if not rows:
        return ""
    keys = [k[:-5] for k in rows[0] if k.endswith("_real") and isinstance(rows[0][k], (int, float))]
    head = "<th>K (final sentences)</th><th>studies</th>" + "".join(
        f"<th>{_esc(k)}<br><span class=\"ci\">real / black / gain</span></th>" for k in keys)
    body = []
    for r in rows:
        cells = [f"<td>{r['k']}</td><td>{r.get('n', '')}</td>"]
        for k in keys:
            cells.append(f"<td>{r[k + '_real']:.3f} / {r[k + '_black']:.3f} / <b>{r['gain_' + k]:+.3f}</b></td>")
        body.append(f'<tr data-k="{r["k"]}">{"".join(cells)}</tr>')
    table = f'<table class="metrics narrative"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    shown = [k for k in keys if k.startswith(("ce_macro_f1", "ce_micro_f1", "radgraph", "bleu_4"))][:6] or keys[:4]
    w, h, left, bottom = 520, 240, 50, 30
    ks = [r["k"] for r in rows]
    gains = [r["gain_" + k] for r in rows for k in shown]
    lo, hi = min(gains + [0.0]), max(gains + [0.0])
    hi = hi if hi > lo else lo + 1.0
    x = lambda k: left + (0 if len(ks) == 1 else (k - ks[0]) / (ks[-1] - ks[0]) * (w - left - 20))  # noqa: E731
    y = lambda v: (h - bottom) - (v - lo) / (hi - lo) * (h - bottom - 10)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="narrative-curve" width="{w}" height="{h}" '
             f'role="img" aria-label="real-image gain against K">',
             f'<line x1="{left}" y1="{y(0):.1f}" x2="{w - 10}" y2="{y(0):.1f}" stroke="#bbb" stroke-dasharray="3 3"/>']
    for k in ks:
        parts.append(f'<text x="{x(k):.1f}" y="{h - 10}" font-size="11" text-anchor="middle" fill="#666">K={k}</text>')
    for t in (lo, hi):
        parts.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" font-size="11" text-anchor="end" fill="#666">{t:+.2f}</text>')
    for j, k in enumerate(shown):
        colour = SERIES_COLOURS[j % len(SERIES_COLOURS)]
        pts = " ".join(f"{x(r['k']):.1f},{y(r['gain_' + k]):.1f}" for r in rows)
        parts.append(f'<polyline class="gain" data-metric="{_esc(k)}" points="{pts}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"/>')
        parts += [f'<circle cx="{x(r["k"]):.1f}" cy="{y(r["gain_" + k]):.1f}" r="3" fill="{colour}">'
                  f'<title>{_esc(k)} K={r["k"]}: gain {r["gain_" + k]:+.3f}</title></circle>' for r in rows]
    parts.append("</svg>")
    legend = "".join(f'<span><i class="sw" style="background:{SERIES_COLOURS[j % len(SERIES_COLOURS)]}"></i>'
                     f'{_esc(k)}</span>' for j, k in enumerate(shown))
    return ("<h2>Narrative bias</h2><p class=\"meta\">The model completes the last K sentences of the true report "
            "from its first sentences (an oracle input), once with the real image and once with a black one; scores "
            "are on the completed sentences only. Gain = real minus black: it shrinks as the prefix grows "
            "(small K) when the model leans on the narrative rather than the image.</p>"
            f'{table}<div class="legend">{legend}</div>{"".join(parts)}')


def trace_block(sample: dict) -> str:
    """A family's whole trace (e.g. a reasoning chain), collapsed under the reports; empty when none."""
    trace = sample.get("trace")
    if not trace:
        return ""
    note = " (no final-report section: last paragraph scored)" if sample.get("final_report_fallback") else ""
    return f'<details class="trace"><summary>full trace{note}</summary><pre>{_esc(trace)}</pre></details>'


# ---------------------------------------------------------------- page
def render_report(*, metrics: dict, baselines: dict[str, dict], ablations: dict[str, dict], samples: list[dict],
                  title: str = "rrg evaluation", variants: Optional[dict[str, dict]] = None,
                  narrative: Optional[list[dict]] = None, extra_html: str = "") -> str:
    """The whole page as a string (see the module docstring); ``extra_html``: family sections (already HTML)."""
    n_dis = sum(bool(disagreements(s.get("ref_labels") or {}, s.get("gen_labels") or {})) for s in samples)
    conv = metrics.get("convention")
    header = (f"<h1>{_esc(title)}</h1><p class=\"meta\">n = {_esc(metrics.get('n', '?'))} studies scored \u00b7 "
              f"generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} \u00b7 "
              f"{len(samples)} studies shown below</p>"
              + (f'<p class="conv">Convention: {_esc(conv)}</p>' if conv else ""))
    cards = "".join(study_card(s) for s in samples)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>{header}"
        "<h2>Metrics</h2><p class=\"meta\">value [95% bootstrap CI]; rows in red: a baseline (outlined) scores at "
        f"least as well as the model.</p>{metric_table(metrics, baselines, ablations, variants)}"
        f"<h2>Per-label F1 ({_esc(_label_set(metrics).name)})</h2>"
        f"{f1_chart({'model': metrics, **baselines}, list(_label_set(metrics).labels))}"
        f"{narrative_section(narrative or [])}{extra_html}"
        f"<h2>Studies</h2><p class=\"meta\">{n_dis} of {len(samples)} with label disagreements "
        "(red: positive status differs; amber: uncertainty differs; + positive, \u2212 negative, ? uncertain, "
        "\u00b7 not mentioned). "
        '<label><input type="checkbox" id="only-dis"> show only studies with disagreements</label></p>'
        f"{cards}<script>{_JS}</script></body></html>")


def write_report(out_dir: str | Path, *, metrics: dict, baselines: dict[str, dict], ablations: dict[str, dict],
                 samples: list[dict], title: str = "rrg evaluation", variants: Optional[dict[str, dict]] = None,
                 narrative: Optional[list[dict]] = None, extra_html: str = "") -> Path:
    """Write ``out_dir/report.html`` (self-contained, opens offline) and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(render_report(metrics=metrics, baselines=baselines, ablations=ablations, samples=samples,
                                  title=title, variants=variants, narrative=narrative, extra_html=extra_html),
                    encoding="utf-8")
    return path
