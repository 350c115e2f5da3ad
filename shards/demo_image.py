"""Phantom chest radiographs: vectorised numpy drawing of anatomy and findings.

Everything is drawn as a *density* map (higher = more attenuating = brighter)
on normalised coordinates (x to the right, y down, both in [0, 1]); each
structure has a soft edge computed from an approximate signed distance, and
the boolean masks are those same soft shapes thresholded at 0.5, so the masks
are exactly the geometry that was drawn. Local structures (blobs, tubes,
leads) are computed only inside their bounding boxes to keep a 512 px study
at a few milliseconds.

Conventions: PA view as displayed clinically, so the patient's *right* lung
is on the image *left* (side sign s = -1) and the left lung on the image right
(s = +1). Findings are passed as the plain dict described in shards/demo.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

SIDE_SIGN = {"right": -1.0, "left": 1.0}  # patient side -> image direction from the midline


@dataclass(frozen=True)
class Anatomy:
    """Per-patient body geometry (normalised units), drawn once per patient."""

    cx: float  # midline
    thorax_hw: float  # half width of the thorax at the lung bases (outer lung edges)
    med_hw: float  # mediastinum half width
    lung_top: float  # y of the lung apices
    dome_right: float  # y of the right hemidiaphragm dome
    dome_left: float
    ctr: float  # normal cardiothoracic ratio of this patient
    heart_hh: float  # heart half height
    exposure: float  # global gain


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    dome_r = float(rng.uniform(0.67, 0.71))
    return Anatomy(
        cx=float(0.5 + rng.normal(0, 0.008)),
        thorax_hw=float(rng.uniform(0.33, 0.37)),
        med_hw=float(rng.uniform(0.05, 0.06)),
        lung_top=float(rng.uniform(0.12, 0.15)),
        dome_right=dome_r,
        dome_left=dome_r + float(rng.uniform(0.01, 0.03)),
        ctr=float(rng.uniform(0.39, 0.45)),
        heart_hh=float(rng.uniform(0.11, 0.125)),
        exposure=float(rng.uniform(0.92, 1.06)),
    )


# --------------------------------------------------------------------------- helpers
@lru_cache(maxsize=8)
def _axis(size: int) -> np.ndarray:
    return ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed (2*size)^2 gaussian field; studies crop it at random offsets (cheap, deterministic)."""
    return np.random.default_rng(20240611).standard_normal((2 * size, 2 * size), dtype=np.float32)


def _box(size: int, x0: float, x1: float, y0: float, y1: float):
    """Pixel slices covering [x0, x1] x [y0, y1] and the local coordinate grids (column, row vectors)."""
    a = _axis(size)
    c0, c1 = max(0, int(x0 * size) - 1), min(size, int(np.ceil(x1 * size)) + 1)
    r0, r1 = max(0, int(y0 * size) - 1), min(size, int(np.ceil(y1 * size)) + 1)
    c1, r1 = max(c1, c0 + 1), max(r1, r0 + 1)
    return (slice(r0, r1), slice(c0, c1)), a[c0:c1][None, :], a[r0:r1][:, None]


def _soft(dist: np.ndarray, eps: float) -> np.ndarray:
    """Signed distance (positive inside) -> soft occupancy in [0, 1] with an edge ~2*eps wide."""
    return np.clip(dist / (2 * eps) + 0.5, 0.0, 1.0)


@lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights, so upsampling is two small matmuls."""
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.minimum(pos.astype(int), n_in - 2)
    w = pos - i0
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] = 1 - w
    m[np.arange(n_out), i0 + 1] = w
    return m


def _upsample(field: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small random field to (h, w).

    einsum rather than ``@``: a multi-threaded BLAS call for this tiny product
    stalls for ~10 ms when the cores are busy (Ray workers); einsum's own loop does not.
    """
    rows = np.einsum("hk,kw->hw", _interp_matrix(h, field.shape[0]), field.astype(np.float32))
    return np.einsum("hk,wk->hw", rows, _interp_matrix(w, field.shape[1]))


def _polyline(img: np.ndarray, size: int, pts: list[tuple[float, float]], width: float, amp: float) -> None:
    """Add a radiopaque tube/wire along a polyline (distance field per segment, inside its box)."""
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        pad = 2 * width
        sl, x, y = _box(size, min(ax, bx) - pad, max(ax, bx) + pad, min(ay, by) - pad, max(ay, by) + pad)
        dx, dy = bx - ax, by - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
        d = np.hypot(x - ax - t * dx, y - ay - t * dy)
        np.maximum(img[sl], amp * np.clip(1.0 - d / width, 0.0, 1.0), out=img[sl])


# --------------------------------------------------------------------------- geometry
def dome_y(an: Anatomy, side: str, findings: dict[str, Any]) -> float:
    """Hemidiaphragm dome height; atelectasis with volume loss raises it on its side."""
    y = an.dome_right if side == "right" else an.dome_left
    atel = findings.get("atelectasis")
    if atel and atel["side"] == side:
        y -= atel["volume_loss"]
    return y


def _lung_dist(an: Anatomy, s: float, x, y, dome: float, lat_shrink=0.0, top_shrink=0.0):
    """Approximate signed distance (positive inside) to one lung field.

    The lateral border rises from the costophrenic angle to a rounded apex that
    sits ~35% of the lung width from the medial border; the base is a parabolic
    diaphragm dome. ``lat_shrink``/``top_shrink`` retract the lung edge (pneumothorax).
    """
    width = an.thorax_hw - an.med_hw
    top = an.lung_top + top_shrink
    d = s * (x - an.cx)  # distance from the midline towards this lung's side
    t = 1.0 - np.clip((y - top) / 0.2, 0.0, 1.0)
    r = np.sqrt(1.0 - t * t)  # circular apex
    lat = an.med_hw + width * (0.35 + 0.65 * r) * (0.93 + 0.07 * np.clip((y - top) / 0.5, 0, 1)) - lat_shrink
    med = an.med_hw + width * 0.35 * (1.0 - r)
    u = (d - an.med_hw) / width - 0.45
    base = dome + 0.16 * u * u
    return np.minimum(np.minimum(lat - d, d - med), np.minimum(y - top, base - y))


def _heart_geom(an: Anatomy, findings: dict[str, Any]) -> tuple[float, float, float, float]:
    """(centre x, centre y, half width, half height) of the cardiac ellipse."""
    cm = findings.get("cardiomegaly")
    ctr = cm["ctr"] if cm else an.ctr
    w = ctr * 2 * an.thorax_hw
    hh = an.heart_hh * (1.0 + (0.25 * (ctr - an.ctr) if cm else 0.0))
    cy = 0.5 * (an.dome_right + an.dome_left) + 0.01 - 0.8 * hh
    return an.cx + 0.12 * w, cy, w / 2, hh


# --------------------------------------------------------------------------- frontal view
def render_frontal(an: Anatomy, findings: dict[str, Any], size: int, rng: np.random.Generator):
    """Draw a PA/AP phantom. Returns (uint8 (H, W) image, bool (8, H, W) masks, geometry dict).

    Mask channels (shards/demo.py DEMO_MASK_CHANNELS): left lung, right lung, heart, mediastinum,
    diaphragm, ribs, vertebrae, abdomen -- the 7 CXAS regions with the lungs split by side.

    Findings draw from their own child generator, so adding one to a study leaves
    the rest of the picture bit-identical (tests compare with/without a finding).
    """
    rng, finding_rng = rng.spawn(2)
    S = size
    eps = 0.75 / S
    ax = _axis(S)
    X, Y = ax[None, :], ax[:, None]
    D = np.zeros((S, S), np.float32)
    width = an.thorax_hw - an.med_hw
    domes = {side: dome_y(an, side, findings) for side in ("right", "left")}
    low = max(domes.values()) + 0.12

    # body: super-ellipse torso plus neck, soft-tissue density (the only full-image structure)
    tx, ty = ((X - an.cx) / (an.thorax_hw + 0.09)) ** 2, ((Y - 0.62) / 0.56) ** 2
    body = _soft(np.maximum(0.05 * (1.0 - tx * tx - ty * ty), np.minimum(0.085 - np.abs(X - an.cx), 0.2 - Y)), eps)
    D += 0.56 * body

    # heart ellipse; mediastinum = central band from the apices down to the heart
    hx, hy, ha, hb = _heart_geom(an, findings)
    heart, med, dia = (np.zeros((S, S), np.float32) for _ in range(3))
    sl, x, y = _box(S, hx - ha, hx + ha, hy - hb, hy + hb)
    heart[sl] = _soft(hb * (1.0 - np.sqrt(((x - hx) / ha) ** 2 + ((y - hy) / hb) ** 2)), eps)
    sl, x, y = _box(S, an.cx - an.med_hw - 0.02, an.cx + an.med_hw + 0.02, an.lung_top - 0.05, hy + 0.5 * hb)
    mw = an.med_hw + 0.012 * np.clip((y - 0.28) / 0.1, 0, 1)
    med[sl] = _soft(np.minimum(np.minimum(mw - np.abs(x - an.cx), y - an.lung_top + 0.04), hy + 0.5 * hb - y), eps) * (1.0 - heart[sl])

    # lungs (aerated fields minus heart and mediastinum), their texture, and the hemidiaphragms
    lungs, boxes = {}, {}
    ptx = findings.get("pneumothorax")
    for side, s in SIDE_SIGN.items():
        xa, xb = sorted((an.cx + s * 0.8 * an.med_hw, an.cx + s * (an.thorax_hw + 0.01)))
        sl, x, y = boxes[side] = _box(S, xa, xb, an.lung_top - 0.01, low)
        lung = np.zeros((S, S), np.float32)
        lung[sl] = _soft(_lung_dist(an, s, x, y, domes[side]), eps) * (1.0 - heart[sl]) * (1.0 - med[sl])
        lungs[side] = lung
        u = (s * (x - an.cx) - an.med_hw) / width - 0.45
        base = domes[side] + 0.16 * u * u
        band = np.minimum(np.minimum(y - base, base + 0.035 - y), np.minimum(s * (x - an.cx) - an.med_hw, an.thorax_hw - s * (x - an.cx)))
        dia[sl] = np.maximum(dia[sl], _soft(band, eps) * (1.0 - heart[sl]))
        # vessel markings radiating from the hilum, fading to the periphery, plus smooth noise
        air = lung[sl]
        tex = _upsample(rng.standard_normal((10, 6)), *air.shape)
        hxs, hys = an.cx + s * (an.med_hw + 0.035), 0.44
        r = np.hypot(x - hxs, (y - hys) * 0.8)
        streak = (0.5 + 0.5 * np.cos(np.arctan2(y - hys, s * (x - hxs)) * 17.0 + 3.0 * tex)) ** 4
        marks = streak * np.exp(-r / 0.16) * np.clip(r / 0.04, 0, 1) + 0.9 * np.exp(-(r / 0.045) ** 2)
        clear = np.ones_like(air)
        if ptx and ptx["side"] == side:  # pneumothorax: marking-free air rim, retracted lung, visceral pleural line
            taper = ptx["depth"] * np.clip(1.0 - (y - an.lung_top) / 0.38, 0.0, 1.0)
            inner = _lung_dist(an, s, x, y, domes[side], lat_shrink=taper, top_shrink=ptx["depth"])
            inside = _soft(inner, eps)
            clear = 1.0 - air * (1.0 - inside)
            line = np.clip(1.0 - np.abs(inner) / (2.2 / S), 0.0, 1.0) * (taper > 0.3 / S)
            D[sl] += air * (0.22 * line - 0.12 * (1.0 - clear) + 0.05 * inside)
        D[sl] += air * ((0.07 * marks + 0.025 * tex) * clear - 0.40)

    # bony cage: spine with vertebral rhythm, trachea, posterior + faint anterior ribs, clavicles
    sl, x, y = _box(S, an.cx - 0.05, an.cx + 0.05, 0.0, 1.0)
    spine = _soft(0.04 - np.abs(x - an.cx), eps) * _soft(y - 0.05, eps) * body[sl]
    vert = np.zeros((S, S), np.float32)
    vert[sl] = spine
    D[sl] += spine * (0.07 + 0.03 * np.cos(2 * np.pi * y / 0.047))
    D[sl] -= 0.14 * _soft(np.minimum(0.016 - np.abs(x - an.cx), 0.33 - y), eps) * body[sl]
    sl, x, y = _box(S, an.cx - an.thorax_hw - 0.03, an.cx + an.thorax_hw + 0.03, an.lung_top - 0.03, low)
    dx = np.abs(x - an.cx)
    phase = (y + 0.18 * dx - 1.5 * dx * dx - an.lung_top + 0.01) / 0.052
    rib = np.clip(1.0 - np.abs(phase - np.floor(phase) - 0.5) / 0.2, 0.0, 1.0)
    cage = _soft(an.thorax_hw + 0.025 - dx, eps) * _soft(dx - 0.035, eps) * ((phase > 0) & (phase < 10.5))
    phase2 = (y - 0.55 * dx + 0.6 * dx * dx) / 0.07
    rib2 = np.clip(1.0 - np.abs(phase2 - np.floor(phase2) - 0.5) / 0.13, 0.0, 1.0)
    D[sl] += cage * (0.085 * rib + 0.03 * rib2 * (y < max(domes.values())))
    ribs = np.zeros((S, S), np.float32)
    ribs[sl] = cage * rib
    sl, x, y = _box(S, an.cx - an.thorax_hw - 0.05, an.cx + an.thorax_hw + 0.05, 0.05, 0.3)
    dx = np.abs(x - an.cx)
    clav_c = 0.165 + 0.12 * (dx - 0.05) - 0.5 * (dx - 0.2) ** 2
    D[sl] += 0.10 * _soft(0.011 - np.abs(y - clav_c), eps) * _soft(np.minimum(dx - 0.03, an.thorax_hw + 0.04 - dx), eps)
    # gastric bubble under the left hemidiaphragm
    sl, x, y = _box(S, an.cx + 0.08, an.cx + 0.24, domes["left"] + 0.02, domes["left"] + 0.12)
    D[sl] -= 0.22 * _soft(0.04 * (1 - np.hypot((x - an.cx - 0.16) / 0.06, (y - domes["left"] - 0.07) / 0.035)), eps)

    _draw_findings(D, lungs, boxes, domes, an, findings, S, finding_rng)
    if "support_devices" in findings:
        _draw_devices(D, an, findings["support_devices"], domes, S)

    off = rng.integers(0, S, size=2)
    D *= an.exposure
    D += 0.012 * _noise_bank(S)[off[0]:off[0] + S, off[1]:off[1] + S] + 0.04
    image = (np.clip(D, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # abdomen: the body below the hemidiaphragms (the diaphragm band itself excluded)
    abd_top = np.where(X < an.cx, domes["right"], domes["left"]) + 0.035 + 0.16 * (((np.abs(X - an.cx) - an.med_hw) / width - 0.45) ** 2)
    abdomen = (body > 0.5) & (Y > abd_top) & (dia <= 0.5)
    masks = np.stack([lungs["left"] > 0.5, lungs["right"] > 0.5, heart > 0.5, med > 0.5, dia > 0.5,
                      ribs > 0.5, vert > 0.5, abdomen])
    return image, masks, {"heart_center": (hx, hy), "heart_half_axes": (ha, hb), "domes": domes}


def _draw_findings(D, lungs, boxes, domes, an: Anatomy, f: dict[str, Any], S: int, rng) -> None:
    """Add pathology densities in place, each confined to the lung field it belongs to."""
    width = an.thorax_hw - an.med_hw
    air = lungs["right"] + lungs["left"]
    eff = f.get("pleural_effusion")
    if eff:
        for side, level in eff["levels"].items():
            s = SIDE_SIGN[side]
            sl, x, y = boxes[side]
            u_lat = np.clip((s * (x - an.cx) - an.med_hw) / width, 0.0, 1.0)
            top = domes[side] + 0.03 - level - 0.05 * u_lat ** 2  # meniscus climbs the lateral wall
            D[sl] += _soft(y - top, 2.5 / S) * lungs[side][sl] * (0.38 + 0.1 * np.clip((y - top) / 0.1, 0, 1))
    cons = f.get("consolidation")
    if cons:
        s = SIDE_SIGN[cons["side"]]
        zt = {"upper": 0.28, "mid": 0.5, "lower": 0.72}[cons["zone"]]
        by = an.lung_top + zt * (domes[cons["side"]] - an.lung_top)
        bx = an.cx + s * (an.med_hw + 0.55 * width)
        R = cons["radius"]
        sl, x, y = _box(S, bx - 2 * R, bx + 2 * R, by - 2 * R, by + 2 * R)
        rough = _upsample(rng.standard_normal((6, 6)), y.shape[0], x.shape[1])
        blob = np.exp(-((x - bx) ** 2 + ((y - by) / 0.85) ** 2) / (R * R)) * (1.0 + 0.35 * rough)
        D[sl] += 0.34 * np.clip((blob - 0.25) / 0.35, 0.0, 1.0) * air[sl]
    atel = f.get("atelectasis")
    if atel:
        s = SIDE_SIGN[atel["side"]]
        bx = an.cx + s * (an.med_hw + 0.62 * width)
        by = domes[atel["side"]] - 0.04
        L, th, ang = atel["length"], atel["thickness"], atel["angle"]
        ca, sa = np.cos(ang), np.sin(ang)
        sl, x, y = _box(S, bx - L, bx + L, by - L * abs(sa) - th, by + L * abs(sa) + th)
        along = (x - bx) * ca + (y - by) * sa
        perp = -(x - bx) * sa + (y - by) * ca
        band = np.clip(1.0 - np.abs(perp) / th, 0, 1) ** 0.6 * np.clip((L - np.abs(along)) / (0.3 * L), 0, 1)
        D[sl] += 0.30 * band * air[sl]
    edema = f.get("edema")
    if edema:  # bilateral perihilar "bat-wing" haze, mottled, sparing the periphery
        amp = {"mild": 0.21, "moderate": 0.28}[edema["severity"]]
        for side, s in SIDE_SIGN.items():
            sl, x, y = boxes[side]
            hxs = an.cx + s * (an.med_hw + 0.04)
            mott = _upsample(rng.standard_normal((10, 6)), y.shape[0], x.shape[1])
            wing = np.exp(-(((x - hxs) / 0.15) ** 2 + ((y - 0.47) / 0.17) ** 2))
            D[sl] += amp * wing * (0.85 + 0.3 * mott) * lungs[side][sl]


def _draw_devices(D, an: Anatomy, dev: dict[str, Any], domes, S: int) -> None:
    """Radiopaque support devices as thin bright lines / rings."""
    img = np.zeros_like(D)
    cx = an.cx
    if "ett" in dev["devices"]:
        tip = dev["ett_tip_y"]
        _polyline(img, S, [(cx + 0.004, 0.0), (cx + 0.002, 0.15), (cx, tip)], 2.2 / S + 0.003, 0.32)
    if "cvc" in dev["devices"]:
        _polyline(img, S, [(cx - 0.11, 0.0), (cx - 0.085, 0.14), (cx - 0.05, 0.25), (cx - 0.035, dev["cvc_tip_y"])], 1.6 / S + 0.002, 0.36)
    if "ngt" in dev["devices"]:
        yl = domes["left"]
        _polyline(img, S, [(cx - 0.006, 0.0), (cx - 0.004, 0.3), (cx + 0.01, 0.55), (cx + 0.07, yl + 0.06), (cx + 0.15, yl + 0.09)], 1.6 / S + 0.002, 0.30)
    for lx, ly in dev.get("ecg", []):
        sl, x, y = _box(S, lx - 0.03, lx + 0.03, ly - 0.03, ly + 0.03)
        r = np.hypot(x - lx, y - ly)
        np.maximum(img[sl], 0.4 * np.clip(1.0 - np.abs(r - 0.016) / 0.006, 0, 1), out=img[sl])
    D += img


# --------------------------------------------------------------------------- lateral view
def render_lateral(an: Anatomy, findings: dict[str, Any], size: int, rng: np.random.Generator) -> np.ndarray:
    """A simple lateral phantom (anterior to the image left): lungs, heart, spine, domes, sternum."""
    S = size
    eps = 0.75 / S
    ax = _axis(S)
    X, Y = ax[None, :], ax[:, None]
    tx, ty = ((X - 0.5) / 0.36) ** 2, ((Y - 0.6) / 0.58) ** 2
    D = 0.56 * _soft(0.05 * (1.0 - tx * tx - ty * ty), eps)
    dome = 0.5 * (an.dome_right + an.dome_left)
    sl, x, y = _box(S, 0.2, 0.76, an.lung_top - 0.01, dome + 0.12)
    base = dome + 0.25 * (x - 0.45) ** 2 + 0.05 * np.clip(x - 0.6, 0, 1)
    lung = _soft(np.minimum(np.minimum(0.25 - np.abs(x - 0.48), y - an.lung_top - 0.12 * ((x - 0.48) / 0.25) ** 2), base - y), eps)
    cm = findings.get("cardiomegaly")
    scale = (cm["ctr"] if cm else an.ctr) / 0.42
    heart = _soft(0.1 * (1.0 - np.hypot((x - 0.36) / (0.13 * scale), (y - dome + 0.08) / 0.13)), eps)
    air = lung * (1.0 - heart)
    tex = _upsample(rng.standard_normal((10, 10)), *air.shape)
    D[sl] += air * (0.03 * tex - 0.38)
    eff = findings.get("pleural_effusion")
    if eff:  # fluid fills the posterior costophrenic sulcus first
        level = max(eff["levels"].values())
        D[sl] += 0.36 * air * _soft(y - (dome + 0.03 - level - 0.08 * np.clip((x - 0.45) / 0.25, 0, 1)), 2.5 / S)
    sl, x, y = _box(S, 0.72, 0.84, 0.1, 1.0)
    D[sl] += 0.09 * _soft(0.045 - np.abs(x - 0.78), eps) * (0.7 + 0.3 * np.cos(2 * np.pi * y / 0.05))
    sl, x, y = _box(S, 0.16, 0.22, 0.22, 0.6)
    D[sl] += 0.08 * _soft(0.008 - np.abs(x - 0.17 - 0.05 * y), eps)
    off = rng.integers(0, S, size=2)
    D *= an.exposure
    D += 0.012 * _noise_bank(S)[off[0]:off[0] + S, off[1]:off[1] + S] + 0.04
    return (np.clip(D, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
