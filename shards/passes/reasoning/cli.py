"""``rrg annotate reasoning``: the backend the config names (template, or the local LM of lm.py) over the shards."""
from __future__ import annotations

from shards.passes.reasoning.annotate import annotate_reasoning, template_members


def command(args, ctx) -> None:
    """``rrg annotate reasoning CONFIG [--shards DIR]``: the perception tree + the chains of the training split."""
    cfg = ctx.load(args)
    members = template_members
    if cfg.data.passes.reasoning.backend == "hf_lm":
        from shards.passes.reasoning.lm import lm_members as members  # loads transformers
    summary = annotate_reasoning(args.shards or cfg.data.shards_dir, cfg.data.passes.reasoning, pool=ctx.pool(cfg),
                                 make_members=members, split=cfg.data.train_split)
    print("reasoning overlay: " + "  ".join(f"{k}: {v}" for k, v in summary.items() if k != "producer"))
