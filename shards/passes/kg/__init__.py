"""The kg pass (R2GenKG's knowledge-graph data jobs): ``rrg kg build`` and ``rrg kg attach``.

* :mod:`shards.passes.kg.extract` - entity/relation extraction from report sentences (rule backend on the
  labeler's mention + negation engine, or a local Hugging Face directory);
* :mod:`shards.passes.kg.graph` - the KG built from TRAINING-split reports only, saved as the ``kg`` asset;
* :mod:`shards.passes.kg.bank` - the disease-aware vision-token bank (Grad-CAM of a light 14-label classifier);
* :mod:`shards.passes.kg.attach` - per-study multi-scale subgraph tensors as the ``kg`` sidecar.

The names these jobs share with the family (assets, sidecar, relations, node types) are defined once, in
shards/passes/kg/constants.py (the family reads them from there); the typed section ``data.passes.kg`` is in
config.py.  This package module stays light: it is imported whenever a config is loaded.
"""
from shards.passes import Command, DataPass, register
from shards.passes.kg.config import KGConfig


class KGError(RuntimeError):
    """Bad KG input (entity-free reports, a study without neighbours, a corrupt kg sidecar): names the study."""


def _address(p) -> None:
    p.add_argument("--address", default=None)


def _rounds(p) -> None:
    p.add_argument("--rounds", type=int, default=3, help="alternating one-process / pool rounds (medians compared)")


PASS = register(DataPass(
    name="kg", summary="knowledge graph of the training reports + per-study subgraphs (rrg kg build / attach)",
    config=KGConfig, errors=(("shards.passes.kg:KGError", 3),),
    groups={"kg": "knowledge graph: build from training reports, attach subgraphs"},
    commands=(Command("kg", "build", "KG + vision-token bank assets from the training split (data.passes.kg)",
                      "shards.passes.kg.graph:command"),
              Command("kg", "attach", "per-study multi-scale subgraph tensors (kg sidecar) for every split, on Ray",
                      "shards.passes.kg.attach:command", _address),
              Command("bench", "kg", "kg attach: one process vs the Ray pool, studies/s and ratio",
                      "shards.passes.kg.attach:bench_command", _rounds)),
    generate="shards.passes.kg.attach:generate_members",
    inspect="shards.passes.kg.inspect:kg_view"))
