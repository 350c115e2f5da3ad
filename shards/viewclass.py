"""Frontal or lateral, from the pixels, when a dataset does not say (IU X-ray's Open-i captions).

The cue is anatomical: in a frontal (PA/AP) chest radiograph the bright mediastinum and spine run
down the middle between two dark lung fields, so the horizontal intensity profile over the chest
peaks in the centre with a trough on each side.  In a lateral view lungs and heart overlap across
the middle (the spine is at one edge, the sternum at the other): no bright centre between two dark
fields.  :func:`mediastinum_contrast` measures that, on a 64 x 64 standardised thumbnail:
centre band (columns 28-35) minus the mean of the darkest column on each side (10-25 and 38-53),
over rows 16-47.  On rrg's phantoms (shards/demo_image.py, 40 anatomies each) frontals score
1.57-1.82 and laterals -0.02-0.13; the thresholds below leave wide margins on both sides, and
nothing in between is decided.  They were set on phantoms, not on real Open-i images: where a
projections file exists, it wins (shards/adapter_iu_xray.py).

- two or more unknown views: the one with the highest score is frontal, the others lateral, if it
  beats the next by :data:`PAIR_MARGIN`; else all stay unknown;
- a lone view: frontal above :data:`FRONTAL_MIN`, lateral below :data:`LATERAL_MAX`, else unknown.
An image that cannot be read stays unknown (the shard writer then counts it under its reason).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

FRONTAL_MIN = 1.0
LATERAL_MAX = 0.4
PAIR_MARGIN = 0.6
THUMB = 64


def mediastinum_contrast(image: np.ndarray) -> float:
    """Bright centre between two dark sides, in standard deviations of the thumbnail (see above)."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr.mean(axis=-1)
    thumb = np.asarray(Image.fromarray(arr.astype(np.float32)).resize((THUMB, THUMB), Image.Resampling.BILINEAR),
                       dtype=np.float64)
    thumb = (thumb - thumb.mean()) / (thumb.std() + 1e-6)
    profile = thumb[16:48].mean(axis=0)
    return float(profile[28:36].mean() - 0.5 * (profile[10:26].min() + profile[38:54].min()))


def classify(scores: list[float], alone: bool) -> list[str]:
    """FRONTAL / LATERAL / UNKNOWN for each score (a study's unknown views)."""
    if alone or len(scores) == 1:
        return ["FRONTAL" if s >= FRONTAL_MIN else "LATERAL" if s <= LATERAL_MAX else "UNKNOWN" for s in scores]
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    if scores[order[0]] - scores[order[1]] < PAIR_MARGIN:
        return ["UNKNOWN"] * len(scores)
    return ["FRONTAL" if k == order[0] else "LATERAL" for k in range(len(scores))]


def positions_from_content(paths: list[str], alone: bool = False) -> list[str]:
    """Positions of image files from their pixels; an unreadable file keeps its view unknown."""
    from shards.imageio import ImageSkip, load_image

    scores: list[float] = []
    for path in paths:
        try:
            scores.append(mediastinum_contrast(load_image(path)))
        except (ImageSkip, ValueError):
            return ["UNKNOWN"] * len(paths)
    return classify(scores, alone)
