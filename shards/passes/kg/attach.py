"""``rrg kg attach``: per-study multi-scale KG subgraph tensors as the ``kg`` sidecar, every split.

For each study (any split) the image embedding of its first view is compared (cosine) with the
training index of the ``kg`` asset; the k most similar TRAINING studies - never the study itself nor
another study of the same patient - vote for their entities (an entity-free, normal study votes for
none; when all k are, the subgraph is empty).  Nodes are ranked
seeds first (votes, then id), then breadth-first KG neighbours (edge count, then id); scale ``i``
keeps the first ``scales[i]`` nodes and at most ``max_edges_per_node`` x nodes of the edges among
them (highest count first).  Members of ``<key>.kg.safetensors``::

    s<i>_node_ids   (n,)    global node ids (int16 when the KG has < 32768 nodes, else int32)
    s<i>_edge_index (2, e)  local indices into s<i>_node_ids (int16)
    s<i>_edge_type  (e,)    relation index (uint8)
    neighbours      (k,)    row of each neighbour in the training index (int32)

Studies are computed by :func:`shards.sidecars.build_sidecar` on the task pool (Ray from the CLI):
the context (training index, ranked adjacency, exclusion rows per key/patient) is shipped to the
workers once, and shards go in batches of about two tasks per worker, so Ray's per-task cost and
the manifest read are paid a few times, not once per shard.  The sidecar is published atomically,
so a failure loses nothing.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save

from shards.passes.kg.constants import KG_SIDECAR
from shards.passes.kg import KGError
from shards.passes.kg.graph import image_embedding, load_kg

VERSION = "1"


def make_context(kg: dict[str, Any], cfg) -> dict[str, Any]:
    """What every task needs, shipped once: the training index and the ranked adjacency."""
    n = len(kg["vocab"]["nodes"])
    ei, count = kg["edge_index"], kg["edge_count"]
    order = np.lexsort((kg["edge_type"], ei[1], ei[0], -count))  # strongest edges first, then by ids
    und = np.concatenate([ei, ei[::-1]], axis=1)
    w = np.concatenate([count, count])
    adj_order = np.lexsort((und[1], -w, und[0]))
    heads, tails = und[0][adj_order], und[1][adj_order]
    ptr = np.searchsorted(heads, np.arange(n + 1))
    same: dict[str, list[int]] = {}  # study key / patient -> training rows never to retrieve for it
    for r, (k, p) in enumerate(zip(kg["keys"], kg["patients"])):
        same.setdefault(f"k:{k}", []).append(r)
        if p:
            same.setdefault(f"p:{p}", []).append(r)
    return {"num_nodes": n, "same": same, "emb": kg["embeddings"],
            "ent_ptr": kg["entity_ptr"], "ent_ids": kg["entity_ids"], "adj_ptr": ptr, "adj": tails,
            "edges": ei[:, order], "edge_type": kg["edge_type"][order], "scales": list(cfg.scales),
            "k": cfg.neighbours, "embed_size": cfg.embed_size, "max_edges": cfg.max_edges_per_node}


def neighbours(key: str, patient: str, emb: np.ndarray, ctx: dict[str, Any]) -> np.ndarray:
    """Rows of the ``k`` most similar training studies, never the study itself nor its patient's.

    Entity-free (normal) studies count: they vote for no entity, so a study whose neighbours all are
    normal gets an empty subgraph - what its neighbours say, not the entities of farther studies.
    """
    sims = ctx["emb"] @ emb
    allowed = np.ones(len(sims), dtype=bool)
    allowed[ctx["same"].get(f"k:{key}", [])] = False
    if patient:
        allowed[ctx["same"].get(f"p:{patient}", [])] = False
    if not allowed.any():
        raise KGError(f"study {key}: no neighbour to retrieve a subgraph from: every training study is this "
                      f"study or its patient's ({patient or 'no patient id'}); the training split needs studies "
                      f"of other patients")
    idx = np.flatnonzero(allowed)
    best = idx[np.lexsort((idx, -sims[idx]))][: ctx["k"]]
    return best.astype(np.int32)


def ranked_nodes(nbrs: np.ndarray, ctx: dict[str, Any], limit: int) -> list[int]:
    votes: dict[int, int] = {}
    for r in nbrs:
        for e in ctx["ent_ids"][ctx["ent_ptr"][r]:ctx["ent_ptr"][r + 1]]:
            votes[int(e)] = votes.get(int(e), 0) + 1
    ranked = sorted(votes, key=lambda e: (-votes[e], e))
    seen = set(ranked)
    i = 0
    while i < len(ranked) and len(ranked) < limit:
        node = ranked[i]
        for nb in ctx["adj"][ctx["adj_ptr"][node]:ctx["adj_ptr"][node + 1]]:
            if int(nb) not in seen:
                seen.add(int(nb))
                ranked.append(int(nb))
        i += 1
    return ranked[:limit]


def subgraph_tensors(ranked: list[int], ctx: dict[str, Any]) -> dict[str, np.ndarray]:
    node_dtype = np.int16 if ctx["num_nodes"] < 32768 else np.int32
    out = {}
    for i, scale in enumerate(ctx["scales"]):
        nodes = np.array(ranked[:scale], dtype=np.int64)
        local = np.full(ctx["num_nodes"], -1, dtype=np.int64)
        local[nodes] = np.arange(len(nodes))
        h, t = local[ctx["edges"][0]], local[ctx["edges"][1]]
        keep = np.flatnonzero((h >= 0) & (t >= 0))[: ctx["max_edges"] * len(nodes)]
        out[f"s{i}_node_ids"] = nodes.astype(node_dtype)
        out[f"s{i}_edge_index"] = np.stack([h[keep], t[keep]]).astype(np.int16)
        out[f"s{i}_edge_type"] = ctx["edge_type"][keep].astype(np.uint8)
    return out


def kg_members(sample, ctx: dict[str, Any]) -> dict[str, bytes]:
    """One study's ``kg.safetensors`` member (module level: it runs in pool tasks)."""
    if not sample.images:
        raise KGError(f"study {sample.key}: no image to retrieve neighbours with")
    emb = image_embedding(sample.images[0], ctx["embed_size"])
    nbrs = neighbours(sample.key, str(sample.record.get("patient_id", "")), emb, ctx)
    ranked = ranked_nodes(nbrs, ctx, max(ctx["scales"]))
    tensors = subgraph_tensors(ranked, ctx)
    tensors["neighbours"] = nbrs
    return {f"{KG_SIDECAR}.safetensors": save(tensors)}


def check_existing(shards_dir) -> None:
    """A corrupt ``kg`` sidecar would fail every read of the pass: refuse, naming the tar (nothing is touched)."""
    from shards.manifest import file_sha256
    from shards.sidecars import load_sidecars

    side = load_sidecars(shards_dir).get(KG_SIDECAR)
    if side is None:
        return
    for file, info in side.shards.items():
        path = side.path(file)
        if not path.is_file() or file_sha256(path) != info["sha256"]:
            raise KGError(f"sidecar '{KG_SIDECAR}' tar {path} is missing or corrupt (sha256 differs): remove "
                          f"{Path(side.root)} and run `rrg kg attach` again (the shards themselves are untouched)")


def attach(data_cfg, pool=None, name: str = KG_SIDECAR, log=print) -> dict[str, Any]:
    """Write the sidecar for every split; returns {studies, seconds, studies_per_s}."""
    from shards.manifest import load_manifest
    from shards.sidecars import build_sidecar

    root = Path(data_cfg.shards_dir)
    check_existing(root)
    kg = load_kg(root)
    ctx = make_context(kg, data_cfg.passes.kg)
    manifest = load_manifest(root)
    splits = sorted(manifest.splits)
    t0 = time.perf_counter()
    info = build_sidecar(root, name, kind="tensors", producer={"name": "rrg kg attach", "scales": ctx["scales"],
                                                               "neighbours": ctx["k"]},
                         version=VERSION, reads_splits=list(kg["reads_splits"]), splits=splits,
                         make_members=kg_members, context=ctx, pool=pool, meta={"scales": ctx["scales"]})
    secs = time.perf_counter() - t0
    studies = sum(v["num_entries"] for v in info.shards.values())
    free = int((np.diff(kg["entity_ptr"]) == 0).sum())
    log(f"kg attach: {studies} studies in {secs:.2f}s = {studies / secs:.1f} studies/s "
        f"(pool parallelism {getattr(pool, 'parallelism', 1)}), scales {ctx['scales']}, sidecar {info.root}; "
        f"{free} of the {len(kg['keys'])} training neighbours are entity-free (they vote for no entity)")
    return {"studies": studies, "seconds": secs, "studies_per_s": studies / secs}


def bench_attach(data_cfg, pool, log=print, rounds: int = 3) -> dict[str, float]:
    """``rrg bench kg``: the attach pass on the whole pool against one process doing the same work per core.

    Every pass runs in pool tasks (Ray runs its workers at nice 15; a pass in the nice-0 driver would not
    run on the same kind of core on a shared machine), after the workers are warmed up, and a round has
    three parts, so that a load swing on a shared machine hits all of them:

    * **per core**: ``cores`` one-process attaches at once, one per worker, each doing the whole pass
      (a :class:`~configs.parallel.SerialPool` attach of every split): the one-process rate with every
      core as busy, and as shared with other jobs, as during the pool pass;
    * **pool**: the attach itself on the pool, as ``rrg kg attach`` runs it;
    * **alone**: one one-process attach with the other cores left idle (or to other users' jobs).

    ratio = median pool rate / (median per-core one-process rate x cores): what the pool loses to its own
    costs (Ray tasks, shipping the context, batching, uneven work).  The ratio against the alone rate is
    printed too; on a dedicated machine the two references agree, on a shared one the alone pass may
    get a core the pool pass has to share.
    """
    import statistics

    cores = pool.parallelism
    # start the workers and import what a task imports, so no pass pays process start-up
    list(pool.map_unordered(_warm, [(i,) for i in range(2 * cores)]))
    per_core, pools, alone = [], [], []
    names = [f"kgbench_one{i}" for i in range(cores)] + ["kgbench_pool"]
    try:
        for _ in range(rounds):  # each part removes what it wrote: the next one reads the same shard set
            together = [r for _, r in pool.map_unordered(_attach_in_one_process,
                                                         [(data_cfg, n) for n in names[:cores]])]
            per_core.append(statistics.mean(r["studies_per_s"] for r in together))
            _remove_sidecars(data_cfg.shards_dir, names)
            pools.append(attach(data_cfg, pool, name="kgbench_pool", log=lambda *_: None)["studies_per_s"])
            _remove_sidecars(data_cfg.shards_dir, names)
            [(_, one)] = list(pool.map_unordered(_attach_in_one_process, [(data_cfg, names[0])]))
            alone.append(one["studies_per_s"])
            _remove_sidecars(data_cfg.shards_dir, names)
    finally:
        _remove_sidecars(data_cfg.shards_dir, names)
    core, par, single = statistics.median(per_core), statistics.median(pools), statistics.median(alone)
    ratio, ratio_alone = par / (core * cores), par / (single * cores)
    fmt = lambda xs: " ".join(f"{x:.0f}" for x in xs)  # noqa: E731
    log(f"bench kg: {rounds} rounds, studies/s: one process per core ({cores} at once) {fmt(per_core)}; "
        f"pool on {cores} cores {fmt(pools)}; one process alone {fmt(alone)}")
    log(f"bench kg: median one process per core {core:.0f} studies/s, pool {par:.0f} studies/s; "
        f"ratio pool / (one process per core x {cores} cores) = {ratio:.2f} "
        f"(against one process alone {single:.0f} studies/s: {ratio_alone:.2f})")
    return {"per_core": core, "pool": par, "alone": single, "cores": cores, "ratio": ratio,
            "ratio_alone": ratio_alone}


def _remove_sidecars(shards_dir, names: list[str]) -> None:
    import shutil

    for name in names:
        shutil.rmtree(Path(shards_dir) / "sidecars" / name, ignore_errors=True)


def _attach_in_one_process(data_cfg, name: str) -> dict[str, Any]:
    from configs.parallel import SerialPool

    return attach(data_cfg, SerialPool(), name=name, log=lambda *_: None)


def _warm(i: int) -> int:
    import shards.reader  # noqa: F401  (torch, PIL, the reader: what every attach task imports)
    import shards.passes.kg.attach  # noqa: F401

    return i


def command(args, ctx) -> None:
    """``rrg kg attach CONFIG [--address ADDR]``."""
    cfg = ctx.load(args)
    check_existing(cfg.data.shards_dir)  # refuse a corrupt sidecar before starting Ray
    attach(cfg.data, pool=ctx.pool(cfg, args.address))


def bench_command(args, ctx) -> None:
    """``rrg bench kg CONFIG [--rounds N]``."""
    cfg = ctx.load(args)
    bench_attach(cfg.data, ctx.pool(cfg), rounds=args.rounds)


def generate_members(cfg, model_dir) -> tuple[Any, dict[str, Any]]:
    """For ``rrg generate``: subgraph retrieval from the training index of the export's ``kg`` asset (copied to
    ``<export>/assets/kg`` by the export), with ``data.passes.kg``.  A new study is in no training index: there
    is no study or patient to leave out of its retrieval."""
    from shards.passes import PassInputError
    from shards.passes.kg.constants import KG_ASSET
    from shards.passes.kg.graph import load_kg
    from shards.sidecars import ASSETS_DIR, SidecarError

    try:
        kg = load_kg(model_dir)
    except SidecarError as err:
        raise PassInputError(f"this model retrieves KG subgraphs (`rrg kg attach`) from the export's "
                             f"{ASSETS_DIR}/{KG_ASSET}, which is unusable ({err}): export again from the run") from None
    ctx = make_context(kg, cfg.data.passes.kg)
    ctx["same"] = {}
    return kg_members, ctx
