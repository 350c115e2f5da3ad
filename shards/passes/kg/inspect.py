"""``rrg shards inspect`` for KG subgraphs: a study's subgraph summarised and drawn beside its image.

Reads the ``kg`` tensors sidecar (``rrg kg attach``) and the ``kg`` asset's ``vocab.json``; prints,
per scale, nodes by type and edges by relation, and draws the largest scale as a circle layout
(colour = node type, line colour = relation, the most-voted nodes labelled).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from shards.sidecars import index_tar

TYPE_COLOURS = [(200, 30, 30), (30, 110, 200), (40, 150, 60)]
REL_COLOURS = [(120, 160, 230), (170, 210, 150), (240, 170, 90)]


def study_subgraph(m, shard_file: str, key: str) -> Optional[dict[str, np.ndarray]]:
    """The study's ``kg`` sidecar tensors, or None when the shard set has none for it."""
    from safetensors.numpy import load

    side = m.sidecars.get("kg")
    if side is None or shard_file not in side.shards:
        return None
    spans = index_tar(side.path(shard_file)).get(key, {})
    if "kg.safetensors" not in spans:
        return None
    offset, size = spans["kg.safetensors"]
    with open(side.path(shard_file), "rb") as f:
        f.seek(offset)
        return load(f.read(size))


def summarize_subgraph(tensors: dict[str, np.ndarray], vocab: dict) -> str:
    nodes, types, rels = vocab["nodes"], vocab["node_types"], vocab["relations"]
    lines = []
    i = 0
    while f"s{i}_node_ids" in tensors:
        ids, et = tensors[f"s{i}_node_ids"], tensors[f"s{i}_edge_type"]
        by_type = {t: sum(1 for n in ids if nodes[int(n)][0] == t) for t in types}
        by_rel = {r: int((et == j).sum()) for j, r in enumerate(rels)}
        lines.append(f"kg scale {i}: {len(ids)} nodes {by_type}, {len(et)} edges {by_rel}")
        i += 1
    if i:
        top = [nodes[int(n)][1] for n in tensors[f"s{i - 1}_node_ids"][:8]]
        lines.append("kg seeds: " + ", ".join(top))
    return "\n".join(lines)


def render_subgraph(tensors: dict[str, np.ndarray], vocab: dict, size: int = 512) -> Image.Image:
    i = 0
    while f"s{i + 1}_node_ids" in tensors:
        i += 1
    ids, ei, et = tensors[f"s{i}_node_ids"], tensors[f"s{i}_edge_index"], tensors[f"s{i}_edge_type"]
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    n = max(len(ids), 1)
    c, r = size / 2, size * 0.38
    pos = [(c + r * math.cos(2 * math.pi * k / n), c + r * math.sin(2 * math.pi * k / n)) for k in range(n)]
    for (a, b), t in zip(ei.T.tolist(), et.tolist()):
        draw.line([pos[a], pos[b]], fill=REL_COLOURS[t % 3], width=1)
    for k, node in enumerate(ids.tolist()):
        kind, name = vocab["nodes"][node]
        col = TYPE_COLOURS[vocab["node_types"].index(kind) % 3]
        x, y = pos[k]
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=col)
        if k < 12:
            draw.text((x + 6, y - 6), name[:18], fill=col)
    draw.text((8, 8), "finding / anatomy / modifier; edges: located_at, modify, suggestive_of", fill=(0, 0, 0))
    return img


def kg_view(m, shard_file: str, key: str) -> Optional[tuple[str, Image.Image]]:
    """(summary text, drawing) for the study, when the shard set has a kg sidecar and asset."""
    tensors = study_subgraph(m, shard_file, key)
    if tensors is None or "kg" not in m.assets:
        return None
    vocab = m.assets["kg"].read_json("vocab.json")
    return summarize_subgraph(tensors, vocab), render_subgraph(tensors, vocab)
