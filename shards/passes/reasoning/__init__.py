"""The reasoning pass (LVMed-R2): the perception-tree asset and the reasoning/reflection chains of the training
split (``rrg annotate reasoning``, annotate.py; the template backend, or a local LM in lm.py), on the shipped
ontology (ontology.py) and chain format (chain.py)."""
from shards.passes import ANNOTATE, Command, DataPass, register
from shards.passes.reasoning.config import ReasoningConfig


def _arguments(p) -> None:
    p.add_argument("--shards", default=None, help="shard directory (default data.shards_dir)")


PASS = register(DataPass(
    name="reasoning", summary="LVMed-R2 perception tree + reasoning chains of the training split (rrg annotate reasoning)",
    config=ReasoningConfig,
    commands=(Command(ANNOTATE, "reasoning", "LVMed-R2 perception tree + reasoning/reflection chains (train split)",
                      "shards.passes.reasoning.cli:command", _arguments),)))
