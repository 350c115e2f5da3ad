"""Named fault points, for the chaos test of resume (tests/test_chaos.py); inert unless asked for.

The trainer calls :func:`point` at the moments where a crash is most likely to leave damage:
``step`` (after an optimizer update, before the step is counted), ``checkpoint_write`` (shards on
disk in ``.tmp-step_N``, no ``COMPLETE`` yet), ``prune`` (an old checkpoint renamed to ``.trash-``,
not yet removed), ``eval`` (in-training evaluation, the engine in eval mode) and ``export`` (the
final export written to its staging dir, not yet published).

With ``RRG_CHAOS_DIR`` set, a point consults ``<dir>/plan.json`` (``[{"point", "step"}, ...]``,
written by the test): when the first entry names this point and a step at or before the current
one, rank 0 writes ``<dir>/paused.json`` (point, step, pid) and waits there, so the test can
SIGKILL it, another worker or the driver at exactly that moment.  Without the variable a point
costs one ``os.environ`` lookup.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "RRG_CHAOS_DIR"
POINTS = ("step", "checkpoint_write", "prune", "eval", "export")


def point(name: str, step: int, rank: int = 0) -> None:
    root = os.environ.get(ENV)
    if not root or rank != 0:
        return
    plan_path = Path(root) / "plan.json"
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, ValueError):
        return
    if not plan or plan[0].get("point") != name or int(plan[0].get("step", 0)) > step:
        return
    from configs.atomic import atomic_write_json

    atomic_write_json(Path(root) / "paused.json", {"point": name, "step": step, "pid": os.getpid(),
                                                   "entry": plan[0]})
    while True:  # until the test's SIGKILL arrives (it removes the entry from the plan first)
        time.sleep(3600)
