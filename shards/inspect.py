"""``rrg shards inspect``: a manifest summary and one sample rendered to a PNG.

The PNG shows the study's view(s) with its masks overlaid (one translucent
colour per channel, legend with channel names) and, beside them, the ids, the
report text and the positive CheXpert labels, so a human can check in seconds
that images, masks and text of a shard set belong together.  Samples are read
straight from the tar (no streaming reader involved).
"""
from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shards.manifest import Manifest, ManifestError, load_manifest
from shards.masks import decode_masks

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
TILE = 512  # displayed height of each view
TEXT_W = 560
ALPHA = 0.4


def summarize(m: Manifest) -> str:
    """Human-readable manifest summary (also printed by ``inspect_shards``)."""
    total = sum(s.num_bytes for s in m.shards)
    mask = m.extra.get("mask_bytes", {})
    lines = [
        f"shards dir:   {m.root}",
        f"adapter:      {m.adapter.get('name')} {json.dumps(m.adapter.get('args', {}), sort_keys=True)}",
        f"preprocess:   {json.dumps(m.preprocess, sort_keys=True)}",
        "splits:       " + ", ".join(f"{k}={v} studies ({len([s for s in m.shards if s.split == k])} shards)"
                                    for k, v in m.splits.items()),
        f"shards:       {len(m.shards)}, {total / 1e6:.1f} MB",
        f"mask bytes:   {mask.get('mean_per_study', 0):.0f} per study (total {mask.get('total', 0) / 1e3:.1f} KB)",
        f"fingerprint:  {m.fingerprint}",
        f"created:      {m.extra.get('created', '?')}",
    ]
    return "\n".join(lines)


def read_sample(m: Manifest, split: str, index: int) -> dict[str, bytes]:
    """Members (ext -> bytes, plus ``__key__``/``__shard__``) of sample ``index`` of ``split``."""
    shards = m.split_shards(split)
    total = sum(s.num_samples for s in shards)
    if not 0 <= index < total:
        raise ManifestError(f"split '{split}' has {total} samples; index {index} is out of range")
    for shard in shards:
        if index < shard.num_samples:
            break
        index -= shard.num_samples
    found: dict[str, bytes] = {}
    seen, last, key_of = -1, None, ""
    with tarfile.open(m.path_of(shard)) as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")  # webdataset: the key ends at the first dot
            if key != last:
                seen, last = seen + 1, key
            if seen == index:
                found[ext], key_of = tar.extractfile(info).read(), key
            elif seen > index:
                break
    if "json" not in found:
        raise ManifestError(f"{m.path_of(shard)}: sample {index} has no .json member")
    found.update(__key__=key_of.encode(), __shard__=shard.file.encode())
    return found


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _block(draw: ImageDraw.ImageDraw, x: int, y: int, text: str, font, fill, chars: int) -> int:
    """Draw ``text`` wrapped at ``chars`` per line (keeping its own line breaks); return the next y."""
    wrapped = "\n".join(textwrap.fill(line, chars) or " " for line in text.splitlines())
    draw.multiline_text((x, y), wrapped, fill=fill, font=font, spacing=3)
    return draw.multiline_textbbox((x, y), wrapped, font=font, spacing=3)[3] + 6


def _overlay(view: Image.Image, masks: Optional[np.ndarray]) -> Image.Image:
    rgb = np.asarray(view.convert("RGB"), dtype=np.float32)
    if masks is not None:
        for c, mask in enumerate(masks):
            colour = np.array(PALETTE[c % len(PALETTE)], dtype=np.float32)
            rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * colour
    return Image.fromarray(rgb.astype(np.uint8))


def render_sample(sample: dict[str, bytes]) -> Image.Image:
    """Views (masks over view 0) on the left, legend + text on the right."""
    record = json.loads(sample["json"])
    masks, channels = None, []
    if record.get("masks"):
        masks = decode_masks(sample[record["masks"]["member"]], record["masks"]["shape"])
        channels = record["masks"]["channels"]
    tiles = []
    for i, view in enumerate(record["views"]):
        img = _overlay(Image.open(io.BytesIO(sample[view["member"]])), masks if i == 0 else None)
        tiles.append(img.resize((max(1, round(img.width * TILE / img.height)), TILE), Image.Resampling.LANCZOS))
    width = sum(t.width for t in tiles) + TEXT_W
    canvas = Image.new("RGB", (width, TILE), (255, 255, 255))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width
    draw = ImageDraw.Draw(canvas)
    small, big = _font(14), _font(17)
    y = 8
    header = (f"{record['study_id']}  patient {record['patient_id']}  [{record['split']}]\n"
              f"shard {sample['__shard__'].decode()}  key {sample['__key__'].decode()}\n"
              "views: " + ", ".join(f"{v['position']} {v['width']}x{v['height']}" for v in record["views"]))
    y = _block(draw, x + 10, y, header, big, (0, 0, 0), 60) + 4
    for c, name in enumerate(channels):
        col = PALETTE[c % len(PALETTE)]
        draw.rectangle((x + 10 + (c % 2) * 270, y, x + 24 + (c % 2) * 270, y + 14), fill=col)
        draw.text((x + 30 + (c % 2) * 270, y), name, fill=(0, 0, 0), font=small)
        y += 20 if c % 2 else 0
    y += 28 if len(channels) % 2 else 8
    labels = record.get("labels") or {}
    positives = [k for k, v in labels.items() if v == 1.0]
    uncertain = [k for k, v in labels.items() if v == -1.0]
    y = _block(draw, x + 10, y, "positive: " + (", ".join(positives) or "none"), big, (150, 0, 0), 62)
    if uncertain:
        y = _block(draw, x + 10, y, "uncertain: " + ", ".join(uncertain), big, (150, 90, 0), 62)
    _block(draw, x + 10, y + 10, record["report"]["text"], small, (20, 20, 20), 70)
    return canvas


def inspect_shards(path: str, out_png: Optional[str] = None, index: int = 0, split: Optional[str] = None) -> Path:
    """Print the summary of the shard set at ``path`` and render one sample to ``out_png``."""
    m = load_manifest(path)
    print(summarize(m))
    splits = m.splits
    split = split or ("train" if "train" in splits else next(iter(splits)))
    sample = read_sample(m, split, index)
    out = Path(out_png) if out_png else m.root / "inspect.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    image = render_sample(sample)
    from shards.passes import all_passes, resolve

    for spec in all_passes():  # each pass's view of the study (e.g. its KG subgraph), summarised and drawn beside it
        view = resolve(spec.inspect)(m, sample["__shard__"].decode(), sample["__key__"].decode()) if spec.inspect else None
        if view is not None:
            print(view[0])
            wide = Image.new("RGB", (image.width + view[1].width, max(image.height, view[1].height)), (255, 255, 255))
            wide.paste(image, (0, 0))
            wide.paste(view[1], (image.width, 0))
            image = wide
    image.save(out)
    print(f"sample {index} of split '{split}' ({sample['__key__'].decode()}) rendered to {out}")
    return out

