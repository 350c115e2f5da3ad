"""The HTML evaluation report, rendered by a real headless Chromium.

Chromium is required (the test fails, not skips, without it):
``apt-get update && apt-get install -y chromium``.
"""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.demo import make_study
from configs.labelsets import CHEXPERT_LABELS
from shards.labeling import label_report
from trainer.evaluation.report_html import METRIC_ROWS, disagreements, metric_table, overlay_image, write_report
from trainer.evaluation.scoring import score

XSS = "Heart size is normal. <script>document.title='pwned'</script> Small left pleural effusion."
TITLE = "rrg test evaluation"


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium not found on PATH; the HTML report test renders with a real headless browser. "
                    "Install it with: apt-get update && apt-get install -y chromium")
    return exe


def _run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Six demo studies + one text-only study whose generated report carries a <script>, rendered."""
    tmp = tmp_path_factory.mktemp("report_html")
    studies = [make_study(i, image_size=256) for i in range(6)]
    records, samples = [], []
    for i, s in enumerate(studies):
        gen = studies[(i + 1) % 6].report  # another study's report: realistic disagreements
        records.append({"id": s.study_id, "reference": s.report, "generated": gen})
    records.append({"id": "xss-study", "reference": studies[0].report, "generated": XSS})
    metrics = score([dict(r) for r in records], bootstrap=20, meteor=False)
    common = [dict(r, generated=studies[2].report) for r in records]
    baselines = {"retrieval": score(common, bootstrap=20, meteor=False),
                 "label_prior": score([dict(r, generated=studies[5].report) for r in records], bootstrap=20,
                                      meteor=False)}
    ablations = {"image=black": score([dict(r, generated=studies[0].report) for r in records], bootstrap=0,
                                      meteor=False)}
    for i, r in enumerate(records):
        s = studies[i] if i < 6 else None
        samples.append({"id": r["id"], "reference": r["reference"], "generated": r["generated"],
                        "ref_labels": label_report(r["reference"]), "gen_labels": label_report(r["generated"]),
                        "image": None if s is None else s.views[0].image,
                        "masks": None if s is None else s.masks,
                        "mask_channels": [] if s is None else s.mask_channels})
    path = write_report(tmp / "out", metrics=metrics, baselines=baselines, ablations=ablations,
                        samples=samples, title=TITLE)
    url = path.resolve().as_uri()
    png = tmp / "screenshot.png"
    _run_chromium([f"--screenshot={png}", "--window-size=1280,2000", url], tmp / "profile1")
    dom = _run_chromium(["--dump-dom", url], tmp / "profile2").stdout
    return {"path": path, "png": png, "dom": dom, "samples": samples, "baselines": baselines}


def test_page_is_self_contained(rendered):
    text = rendered["path"].read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), "external resource referenced"
    assert "@import" not in text and "url(" not in text


def test_screenshot_is_not_blank(rendered):
    assert rendered["png"].is_file(), "chromium wrote no screenshot"
    img = np.asarray(Image.open(rendered["png"]).convert("L"), dtype=np.float64)
    assert img.shape == (2000, 1280)
    assert img.std() > 15, f"screenshot looks blank (std {img.std():.1f})"


def test_metric_table_rows_rendered(rendered):
    dom = rendered["dom"]
    assert f"<title>{TITLE}</title>" in dom
    for label, key in METRIC_ROWS:
        assert f'data-metric="{key}"' in dom, f"metric row {key} missing"
    assert "not computed: disabled" in dom  # METEOR status text stands in for its value
    assert re.search(r"\d\.\d{3} <span class=\"ci\">\[\d\.\d{2}, \d\.\d{2}\]</span>", dom)
    assert "image=black" in dom and re.search(r"\([+-]\d\.\d{3}\)", dom)


def test_f1_chart_has_one_bar_per_label_and_series(rendered):
    bars = re.findall(r'<rect class="bar" data-label="([^"]+)" data-series="([^"]+)"', rendered["dom"])
    series = ["model", *rendered["baselines"]]
    assert len(bars) == len(CHEXPERT_LABELS) * len(series)
    assert {b[0] for b in bars} == set(CHEXPERT_LABELS) and {b[1] for b in bars} == set(series)


def _cards(dom: str) -> dict[str, str]:
    chunks = dom.split('<div class="card" ')[1:]
    return {re.match(r'data-id="([^"]*)"', c).group(1): c for c in chunks}


def test_one_card_per_sample_with_png_image(rendered):
    cards = _cards(rendered["dom"])
    assert list(cards) == [s["id"] for s in rendered["samples"]]
    for s in rendered["samples"]:
        imgs = re.findall(r'<img alt="study image" src="data:image/png;base64,([^"]+)"', cards[s["id"]])
        if s["image"] is None:
            assert not imgs and "no image" in cards[s["id"]]
            continue
        assert len(imgs) == 1
        raw = base64.b64decode(imgs[0])
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        img = Image.open(io.BytesIO(raw))
        assert img.format == "PNG" and img.size == (256, 256) and img.mode == "RGB"
        for name in s["mask_channels"]:  # legend lists every mask channel
            assert name in cards[s["id"]]


def test_disagreement_chips_and_highlights(rendered):
    cards = _cards(rendered["dom"])
    s0 = rendered["samples"][0]
    assert s0["ref_labels"]["Cardiomegaly"] == 0.0 and s0["gen_labels"]["Cardiomegaly"] == 1.0
    card = cards[s0["id"]]
    assert 'data-disagree="1"' in card
    assert '<span class="chip major" data-label="Cardiomegaly">Cardiomegaly: ref \u2212 / gen +</span>' in card
    for label, kind in disagreements(s0["ref_labels"], s0["gen_labels"]):
        assert f'class="chip {kind}" data-label="{label}"' in card
    gen = card.split('class="report gen">', 1)[1].split("</div>", 1)[0]
    marks = re.findall(r'<mark class="dis" title="([^"]*)">([^<]*)</mark>', gen)
    assert any("Cardiomegaly" in t and "cardiomegaly" in body.lower() for t, body in marks)
    assert not any("No pleural effusion" in body for _, body in marks)  # both sides negative: not flagged


def test_report_text_is_escaped(rendered):
    dom = rendered["dom"]
    assert "pwned" not in re.search(r"<title>(.*?)</title>", dom).group(1)
    assert dom.count("<script") == 1  # the page's own filter script only
    gen = _cards(dom)["xss-study"].split('class="report gen">', 1)[1]
    assert gen.startswith("Heart size is normal. &lt;script&gt;document.") and "'pwned'&lt;/script&gt;" in gen


def test_model_losing_to_a_baseline_is_highlighted():
    model = {"bleu_1": 0.312, "bleu_1_ci_low": 0.281, "bleu_1_ci_high": 0.349, "rouge_l": 0.5,
             "meteor_status": "not computed: java not found"}
    base = {"bleu_1": 0.40, "rouge_l": 0.2}
    html = metric_table(model, {"retrieval": base, "label_prior": {"bleu_1": 0.1}}, {"image=black": {"bleu_1": 0.2}})
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr data-metric="(\w+)".*?</tr>', html)}
    assert '0.312 <span class="ci">[0.28, 0.35]</span>' in rows["bleu_1"]
    assert 'class="loses"' in rows["bleu_1"] and 'class="loses"' not in rows["rouge_l"]
    assert '<td class="best-baseline">0.400</td>' in rows["bleu_1"]
    assert "(-0.112)" in rows["bleu_1"] and "not computed: java not found" in rows["meteor"]


def test_overlay_accepts_rgb_and_masks_at_another_resolution():
    image = np.full((600, 400, 3), 100, dtype=np.uint8)
    masks = np.zeros((2, 300, 200), dtype=bool)
    masks[0, :150] = True  # top half of the image, channel 0 (PALETTE[0] is red)
    out = np.asarray(overlay_image(image, masks))
    assert out.shape == (384, 256, 3)  # longest side scaled to IMAGE_MAX
    top, bottom = out[50, 128].astype(int), out[330, 128].astype(int)
    assert top[0] > top[1] + 40 and tuple(bottom) == (100, 100, 100)
