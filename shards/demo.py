"""rrg's synthetic demo dataset: deterministic phantom chest radiographs with reports.

Every study is a pure function of ``(index, seed)``: any index set can be
generated independently (Ray tasks in the shard writer). The ground-truth
findings are sampled first; they decide both the pixels (shards/demo_image.py)
and the report text + CheXpert labels (shards/demo_report.py), so a model can
only predict the labels by looking at the image.

Patients: indices come in blocks of 6 consecutive studies; each block is cut
into 1-3-study patients by a composition drawn from ``(seed, block)``, so the
patient and split of an index are known without rendering (``demo_entry``).
Split is drawn per patient (~80/10/10), so no patient crosses splits. The
patient's anatomy is drawn from the patient id, the findings per study.

Label balance: with probability 0.15 a study is normal; otherwise each of the
six pathologies is present independently with p = 0.42 (marginal ~0.36,
normal studies ~18%). Support devices are independent (p = 0.35) and are not
a pathology.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from shards.demo_image import Anatomy, render_frontal, render_lateral, sample_anatomy
from shards.demo_report import write_report
from shards.records import Study, View

DEMO_MASK_CHANNELS = ["left_lung", "right_lung", "heart", "mediastinum", "diaphragm"]
PATHOLOGIES = ["cardiomegaly", "pleural_effusion", "pneumothorax", "consolidation", "atelectasis", "edema"]
FINDINGS = PATHOLOGIES + ["support_devices"]  # "normal" = none of PATHOLOGIES

BLOCK = 6
P_NORMAL, P_PATHOLOGY, P_DEVICES = 0.15, 0.42, 0.35
EFFUSION_LEVELS = {"small": (0.045, 0.07), "moderate": (0.10, 0.14), "large": (0.18, 0.23)}


@lru_cache(maxsize=1)
def _compositions() -> list[tuple[int, ...]]:
    """All ordered ways to cut a block of BLOCK studies into patients of 1-3 studies."""
    out = []
    for n in range(2, BLOCK + 1):
        out += [c for c in itertools.product((1, 2, 3), repeat=n) if sum(c) == BLOCK]
    return sorted(out)


def _patient(index: int, seed: int) -> tuple[int, int]:
    """(block, patient number within the block) of a study index."""
    block, pos = divmod(index, BLOCK)
    comps = _compositions()
    comp = comps[int(np.random.default_rng([seed, block, 7]).integers(len(comps)))]
    bounds = np.cumsum(comp)
    return block, int(np.searchsorted(bounds, pos, side="right"))


def demo_entry(index: int, seed: int = 0) -> tuple[str, str]:
    """(patient_id, split) of a study, cheaply (no rendering)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    block, k = _patient(index, seed)
    u = np.random.default_rng([seed, block, k, 11]).random()
    split = "train" if u < 0.8 else ("validate" if u < 0.9 else "test")
    return f"demo-p{block:06d}-{k}", split


def sample_findings(rng: np.random.Generator) -> dict[str, Any]:
    """Ground truth for one study: {finding name: parameters}; absent findings are left out."""
    f: dict[str, Any] = {}
    normal = rng.random() < P_NORMAL
    present = {name: (not normal) and rng.random() < P_PATHOLOGY for name in PATHOLOGIES}
    side = lambda: "left" if rng.random() < 0.5 else "right"  # noqa: E731
    if present["cardiomegaly"]:
        ctr = float(rng.uniform(0.56, 0.68))
        f["cardiomegaly"] = {"ctr": ctr, "severity": "mild" if ctr < 0.6 else ("moderate" if ctr < 0.64 else "marked"), "uncertain": False}
    if present["pleural_effusion"]:
        r = rng.random()
        sides = ["left", "right"] if r < 0.25 else (["left"] if r < 0.65 else ["right"])
        sizes = {s: ["small", "moderate", "large"][int(rng.choice(3, p=[0.45, 0.35, 0.2]))] for s in sides}
        levels = {s: float(rng.uniform(*EFFUSION_LEVELS[sizes[s]])) for s in sides}
        hedge = len(sides) == 1 and sizes[sides[0]] == "small" and rng.random() < 0.35
        f["pleural_effusion"] = {"sizes": sizes, "levels": levels, "uncertain": bool(hedge)}
    if present["pneumothorax"]:
        size = "small" if rng.random() < 0.55 else "moderate"
        depth = float(rng.uniform(0.04, 0.05) if size == "small" else rng.uniform(0.06, 0.08))
        f["pneumothorax"] = {"side": side(), "size": size, "depth": depth, "uncertain": bool(size == "small" and rng.random() < 0.2)}
    if present["consolidation"]:
        zone = ["upper", "mid", "lower"][int(rng.integers(3))]
        f["consolidation"] = {"side": side(), "zone": zone, "radius": float(rng.uniform(0.05, 0.08)),
                              "uncertain": bool(rng.random() < 0.12)}
    if present["atelectasis"]:
        f["atelectasis"] = {"side": side(), "length": float(rng.uniform(0.10, 0.13)), "thickness": float(rng.uniform(0.015, 0.02)),
                            "angle": float(rng.uniform(-0.25, 0.25)), "volume_loss": float(rng.uniform(0.02, 0.035)),
                            "uncertain": bool(rng.random() < 0.15)}
    if present["edema"]:
        sev = "mild" if rng.random() < 0.5 else "moderate"
        f["edema"] = {"severity": sev, "uncertain": bool(sev == "mild" and rng.random() < 0.25)}
    if rng.random() < P_DEVICES:
        devs = [d for d, p in (("ett", 0.5), ("cvc", 0.55), ("ngt", 0.35)) if rng.random() < p] or ["cvc"]
        cm = int(rng.integers(3, 7))
        ecg = [[float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.75))] for _ in range(int(rng.integers(3, 5)))] if rng.random() < 0.5 else []
        f["support_devices"] = {"devices": devs, "ett_carina_cm": cm, "ett_tip_y": 0.33 - 0.012 * cm,
                                "cvc_tip_y": float(rng.uniform(0.36, 0.41)), "ecg": ecg}
    return f


def _anatomy(index: int, seed: int) -> Anatomy:
    block, k = _patient(index, seed)
    return sample_anatomy(np.random.default_rng([seed, block, k, 1]))


def _measure_ctr(masks: np.ndarray) -> float:
    """Cardiothoracic ratio from the drawn masks: heart width / outer lung-to-lung width."""
    lung_cols = np.flatnonzero((masks[0] | masks[1]).any(axis=0))
    heart_cols = np.flatnonzero(masks[2].any(axis=0))
    if lung_cols.size == 0 or heart_cols.size == 0:
        return float("nan")
    return float((heart_cols[-1] - heart_cols[0] + 1) / (lung_cols[-1] - lung_cols[0] + 1))


def build_study(index: int, seed: int, findings: dict[str, Any], image_size: int = 512,
                two_view_fraction: float = 0.25, language: str = "en") -> Study:
    """Render and report a study for given ground-truth findings (make_study minus the sampling)."""
    an = _anatomy(index, seed)
    patient_id, split = demo_entry(index, seed)
    view_rng = np.random.default_rng([seed, index, 3])
    two_views = view_rng.random() < two_view_fraction
    position = "AP" if "support_devices" in findings or view_rng.random() < 0.1 else "PA"
    image, masks, geom = render_frontal(an, findings, image_size, np.random.default_rng([seed, index, 4]))
    views = [View(image=image, position=position)]
    if two_views:
        views.append(View(image=render_lateral(an, findings, image_size, np.random.default_rng([seed, index, 5])), position="LATERAL"))
    if language == "es":  # PadChest-style Spanish reports, PadChest main labels
        from shards.demo_report_es import write_report_es

        body, impression, topics, labels = write_report_es(findings, np.random.default_rng([seed, index, 6]))
    elif language == "en":
        body, impression, topics, labels = write_report(findings, np.random.default_rng([seed, index, 6]))
    else:
        raise ValueError(f"demo language must be 'en' or 'es', got {language!r}")
    meta = {
        "generator": "rrg-demo-phantom-v1",
        "findings": findings,
        "normal": not any(k in findings for k in PATHOLOGIES),
        "view_positions": [v.position for v in views],
        "ctr": _measure_ctr(masks),
        "anatomy": asdict(an),
        "domes": geom["domes"],
        "side_convention": "patient side; the patient's right is on the image left",
    }
    return Study(study_id=f"demo-{index:06d}", patient_id=patient_id, split=split, views=views,
                 findings=body, impression=impression, labels=labels, topics=topics, masks=masks,
                 label_set="padchest" if language == "es" else "chexpert",
                 mask_channels=list(DEMO_MASK_CHANNELS), meta=meta)


def make_study(index: int, seed: int = 0, image_size: int = 512, two_view_fraction: float = 0.25,
               language: str = "en") -> Study:
    """The demo study number ``index`` (pure function of its arguments)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    findings = sample_findings(np.random.default_rng([seed, index, 2]))
    return build_study(index, seed, findings, image_size=image_size, two_view_fraction=two_view_fraction,
                       language=language)


def label_frequencies(studies: list[Study]) -> dict[str, dict[str, Optional[float]]]:
    """Per CheXpert label: fraction positive, uncertain, negative, blank (for reports and tests)."""
    from configs.labelsets import CHEXPERT_LABELS

    n = max(len(studies), 1)
    out = {}
    for lab in CHEXPERT_LABELS:
        vals = [s.labels.get(lab) for s in studies]
        out[lab] = {k: sum(v == code for v in vals) / n for k, code in (("pos", 1.0), ("unc", -1.0), ("neg", 0.0))}
        out[lab]["blank"] = sum(v is None for v in vals) / n
    return out
