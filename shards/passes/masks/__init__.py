"""The masks pass: a segmentation model run once over every study's frontal view, cached as a sidecar
(``rrg shards masks``, run.py); Radixpert and LLaVA-TA read the masks, and ``rrg generate`` makes them
for a new study with the same function."""
from shards.passes import Command, DataPass, register
from shards.passes.masks.config import MasksConfig


def _arguments(p) -> None:
    p.add_argument("--shards", default=None, help="shard directory (default data.shards_dir)")


PASS = register(DataPass(
    name="masks", summary="segmenter masks of every study's frontal view (rrg shards masks)", config=MasksConfig,
    commands=(Command("shards", "masks", "run a segmentation model on every study's frontal view (Ray tasks)",
                      "shards.passes.masks.run:command", _arguments),),
    generate="shards.passes.masks.run:generate_members"))
