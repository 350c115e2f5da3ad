"""``rrg kg build``: the knowledge graph from TRAINING-split reports only, saved as the ``kg`` asset.

Reads the training split's shards (reports through the extractor, first views for the image
index), counts each triple once per report, numbers nodes by (type, name) and edges by
(head, relation, tail), so the same training reports always give byte-identical files:

* ``graph.safetensors``: ``edge_index`` (2, E) int32, ``edge_type`` (E,) int32 (index into
  ``RELATIONS``), ``edge_count`` (E,) int32 (training reports stating it), ``node_type`` (N,) int32,
  ``node_features`` (N, D) float32 (hashed n-gram embeddings, or a local text encoder's mean-pooled output);
* ``vocab.json``: nodes ``[type, name]``, relation and node-type names;
* ``index.safetensors`` + ``index.json``: per training study its image embedding and entity ids
  (CSR ``entity_ptr``/``entity_ids``), key and patient - what ``rrg kg attach`` retrieves from;
* ``summary.json``: counts, entity-free training reports, extractor fallbacks.

The asset records ``reads_splits: [<train split>]``; validation/test reports are never opened.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import numpy as np
from PIL import Image
from safetensors.numpy import save

from shards.passes.kg.constants import KG_ASSET, NODE_TYPES, RELATIONS
from shards.passes.kg import KGError

VERSION = "1"


def image_embedding(image: np.ndarray, size: int) -> np.ndarray:
    """Cheap, deterministic retrieval embedding: the view pooled to size x size, centred, unit norm."""
    img = Image.fromarray(image if image.ndim == 2 else image.mean(-1).astype(np.uint8))
    v = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32).ravel()
    v = v - v.mean()
    return (v / max(float(np.linalg.norm(v)), 1e-6)).astype(np.float32)


def hashed_features(names: list[str], dim: int) -> np.ndarray:
    """Sum of hash-seeded Gaussian vectors of a name's words and character trigrams, unit norm."""
    out = np.zeros((len(names), dim), dtype=np.float32)
    for i, name in enumerate(names):
        text = f" {name} "
        grams = name.split() + [text[j:j + 3] for j in range(len(text) - 2)]
        for g in grams:
            seed = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
            out[i] += np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        out[i] /= max(float(np.linalg.norm(out[i])), 1e-6)
    return out


def encoder_features(names: list[str], directory: str) -> np.ndarray:
    """Mean-pooled last hidden states of a LOCAL text encoder directory (e.g. BioClinicalBERT)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModel.from_pretrained(directory, local_files_only=True).eval()
    rows = []
    with torch.no_grad():
        for i in range(0, len(names), 64):
            enc = tok(names[i:i + 64], padding=True, truncation=True, max_length=32, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            rows.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(rows).float().numpy()


def read_split(manifest, split: str, extractor, embed_size: int, bank_size: int = 0) -> dict[str, Any]:
    """Extraction, image embedding (and small images for the bank) of every study of ``split``, in order."""
    from shards.reader import iter_decoded

    rows: dict[str, list] = {"keys": [], "patients": [], "extractions": [], "embeddings": [], "images": [],
                             "reports": []}
    for shard in manifest.split_shards(split):
        for s in iter_decoded(manifest, shard):
            rows["keys"].append(s.key)
            rows["patients"].append(str(s.record.get("patient_id", "")))
            rows["reports"].append(s.report)
            rows["extractions"].append(extractor(s.report))
            rows["embeddings"].append(image_embedding(s.images[0], embed_size))
            if bank_size:
                img = s.images[0] if s.images[0].ndim == 2 else s.images[0].mean(-1).astype(np.uint8)
                rows["images"].append(np.asarray(Image.fromarray(img).resize((bank_size, bank_size), Image.BILINEAR)))
    return rows


def assemble(extractions: list) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray, np.ndarray]:
    """(nodes, edge_index (2,E), edge_type (E,), edge_count (E,)) from per-report extractions."""
    nodes = sorted({e for x in extractions for e in x.entities}, key=lambda n: (NODE_TYPES.index(n[0]), n[1]))
    nid = {n: i for i, n in enumerate(nodes)}
    counts: dict[tuple[int, int, int], int] = {}
    for x in extractions:
        for h, r, t in x.triples:
            k = (nid[h], RELATIONS.index(r), nid[t])
            counts[k] = counts.get(k, 0) + 1
    keys = sorted(counts)
    edge_index = np.array([[h for h, _, _ in keys], [t for _, _, t in keys]], dtype=np.int32).reshape(2, -1)
    edge_type = np.array([r for _, r, _ in keys], dtype=np.int32)
    edge_count = np.array([counts[k] for k in keys], dtype=np.int32)
    return nodes, edge_index, edge_type, edge_count


def build_kg(data_cfg, pool=None, log=print) -> dict[str, Any]:
    """``rrg kg build``: read the training split, write the ``kg`` asset (and the vision-token bank)."""
    from shards.manifest import load_manifest
    from shards.sidecars import write_asset
    from shards.passes.kg.extract import make_extractor

    cfg, split = data_cfg.passes.kg, data_cfg.train_split
    manifest = load_manifest(data_cfg.shards_dir)
    if not manifest.split_shards(split):
        raise KGError(f"{manifest.root}: no '{split}' shards to build the KG from")
    extractor = make_extractor(cfg)
    rows = read_split(manifest, split, extractor, cfg.embed_size, cfg.bank_image_size if cfg.bank else 0)
    free = [k for k, x in zip(rows["keys"], rows["extractions"]) if not x.entities]
    if len(free) > cfg.max_entity_free_fraction * len(rows["keys"]):
        raise KGError(f"{len(free)}/{len(rows['keys'])} training reports have no entity (limit "
                      f"data.passes.kg.max_entity_free_fraction={cfg.max_entity_free_fraction}), e.g. study {free[0]}: "
                      f"{rows['reports'][rows['keys'].index(free[0])][:80]!r}; check the extractor")
    nodes, edge_index, edge_type, edge_count = assemble(rows["extractions"])
    if not nodes:
        raise KGError(f"no entity in any of the {len(rows['keys'])} training reports")
    names = [f"{t} {n}" for t, n in nodes]
    feats = hashed_features(names, cfg.feature_dim) if cfg.features == "hashed" else encoder_features(names, cfg.encoder_dir)
    nid = {n: i for i, n in enumerate(nodes)}
    ent = [sorted(nid[e] for e in x.entities) for x in rows["extractions"]]
    ptr = np.cumsum([0] + [len(e) for e in ent]).astype(np.int32)
    graph = {"edge_index": edge_index, "edge_type": edge_type, "edge_count": edge_count,
             "node_type": np.array([NODE_TYPES.index(t) for t, _ in nodes], dtype=np.int32),
             "node_features": np.ascontiguousarray(feats, dtype=np.float32)}
    index = {"embeddings": np.stack(rows["embeddings"]).astype(np.float32), "entity_ptr": ptr,
             "entity_ids": np.array([i for e in ent for i in e], dtype=np.int32)}
    summary = {"train_split": split, "studies": len(rows["keys"]), "nodes": len(nodes), "edges": int(edge_count.size),
               "nodes_by_type": {t: sum(1 for n in nodes if n[0] == t) for t in NODE_TYPES},
               "edges_by_relation": {r: int((edge_type == i).sum()) for i, r in enumerate(RELATIONS)},
               "entity_free_reports": free, "extractor_fallbacks": sum(x.fallbacks for x in rows["extractions"])}
    files = {"graph.safetensors": save(graph), "index.safetensors": save(index),
             "vocab.json": _json({"nodes": [list(n) for n in nodes], "relations": list(RELATIONS),
                                  "node_types": list(NODE_TYPES)}),
             "index.json": _json({"keys": rows["keys"], "patients": rows["patients"]}),
             "summary.json": _json(summary)}
    write_asset(manifest.root, KG_ASSET, files, producer={"name": "rrg kg build", "extractor": cfg.extractor,
                                                          "features": cfg.features},
                version=VERSION, reads_splits=[split], meta={k: summary[k] for k in ("nodes", "edges", "studies")})
    log(f"kg: {len(nodes)} nodes {summary['nodes_by_type']}, {edge_count.size} edges {summary['edges_by_relation']} "
        f"from {len(rows['keys'])} '{split}' reports ({summary['extractor_fallbacks']} extractor fallbacks)")
    if free:  # normal reports state no present finding; each is named in summary.json
        log(f"kg: {len(free)}/{len(rows['keys'])} training reports have no entity (limit "
            f"data.passes.kg.max_entity_free_fraction={cfg.max_entity_free_fraction}): they add nothing to the graph and "
            f"stay in the retrieval index, where they vote for no entity; all listed in summary.json "
            f"'entity_free_reports', e.g. {', '.join(free[:3])} ({rows['reports'][rows['keys'].index(free[0])][:60]!r})")
    if cfg.bank:
        from shards.passes.kg.bank import build_bank

        build_bank(manifest.root, rows, cfg, split, log=log)
    return summary


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def load_kg(shards_dir) -> dict[str, Any]:
    """The ``kg`` asset as arrays + vocab (verified against its recorded sha256)."""
    from safetensors.numpy import load

    from shards.sidecars import ASSETS_DIR, load_asset

    from pathlib import Path

    asset = load_asset(Path(shards_dir) / ASSETS_DIR / KG_ASSET)
    out: dict[str, Any] = dict(load(asset.read_bytes("graph.safetensors")))
    out.update(load(asset.read_bytes("index.safetensors")))
    out["vocab"] = asset.read_json("vocab.json")
    out.update(asset.read_json("index.json"))
    out["reads_splits"] = asset.meta["reads_splits"]
    return out




def command(args, ctx) -> None:
    """``rrg kg build CONFIG``."""
    build_kg(ctx.load(args).data)
