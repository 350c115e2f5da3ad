"""Many rrg jobs on one machine: each embedded Ray cluster is its own (address, temp dir), found by
no discovery, so two trainings and an evaluation at once finish exactly as each does alone.

Other Ray clusters may be running on the machine at the same time (other users, other tests): that
is the situation under test, and nothing here depends on them being there or not.
"""
from __future__ import annotations

import json
import threading
import time

import pytest

from tests.trainkit import TINY, env_offline, rrg, step_losses, torchrun

STEPS = 20
TRAIN = [f"train.max_steps={STEPS}", "checkpoint.every_steps=10", "cluster.num_workers=2"]
EVAL = ["eval.bootstrap=0", "eval.meteor=false", "eval.max_new_tokens=16", "--checkpoint", "latest"]


class Job:
    """A started command whose output is read all along (a full pipe would stall it)."""

    def __init__(self, args: list[str], **kw):
        self.proc = rrg(args, **kw)
        self.log, self.end = "", None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.log, _ = self.proc.communicate()
        self.end = time.time()

    def wait(self, timeout: float = 900) -> "Job":
        self._thread.join(timeout)
        assert self.end is not None, f"still running after {timeout}s:\n{self.log[-3000:]}"
        return self

    @property
    def code(self) -> int:
        return self.proc.returncode


@pytest.mark.slow
def test_two_trainings_and_an_eval_at_once_each_finish_with_the_solo_results(shards, tmp_path):
    solo = tmp_path / "solo"
    torchrun(2, TRAIN + [f"data.shards_dir={shards}", f"output_dir={solo}"])  # bit-identical to a Ray run
    reference = step_losses(solo)
    assert sorted(reference) == list(range(1, STEPS + 1))
    ev = ["eval", TINY, f"data.shards_dir={shards}", f"output_dir={solo}", *EVAL]
    alone = Job([*ev, "--out", str(tmp_path / "eval-solo")]).wait()
    assert alone.code == 0, alone.log[-4000:]

    env = env_offline(tmp_path)
    started = time.time()
    jobs = {name: Job(["train", TINY, *TRAIN, f"data.shards_dir={shards}", f"output_dir={tmp_path / name}"], env=env)
            for name in ("a", "b")}
    jobs["eval"] = Job([*ev, "--out", str(tmp_path / "eval-busy")])
    # meanwhile, a third training into a's directory is refused at once by a's run lock
    lock = tmp_path / "a" / ".run.lock"
    while not lock.is_file():
        assert jobs["a"].end is None, f"a ended before it took its run lock:\n{jobs['a'].log[-4000:]}"
        time.sleep(0.2)
    a_started = time.time()
    dup = Job(["train", TINY, *TRAIN, f"data.shards_dir={shards}", f"output_dir={tmp_path / 'a'}"], env=env).wait()
    assert jobs["a"].end is None and jobs["b"].end is None, \
        f"a or b ended before the probe (no overlap):\n{jobs['a'].log[-3000:]}\n{jobs['b'].log[-3000:]}"
    line = [ln for ln in dup.log.splitlines() if ln.startswith("rrg: ")][-1]
    assert dup.code == 4 and f"pid {jobs['a'].proc.pid} on" in line and "in use by another training run" in line, \
        dup.log[-3000:]

    for name, job in jobs.items():
        job.wait()
        assert job.code == 0, f"{name}:\n{job.log[-5000:]}"
        assert "Found multiple active Ray instances" not in job.log, f"{name} went looking for a cluster"
        assert "PlacementGroupCleaner" not in job.log
    assert jobs["eval"].end > a_started > started, "the evaluation did not overlap the trainings"
    assert step_losses(tmp_path / "a") == reference == step_losses(tmp_path / "b")
    for file in ("predictions.jsonl", "metrics.json"):
        assert (tmp_path / "eval-busy" / file).read_text() == (tmp_path / "eval-solo" / file).read_text(), file
    assert json.loads((tmp_path / "eval-busy" / "metrics.json").read_text())
    assert not (tmp_path / "a" / ".run.lock").exists() and not (tmp_path / "b" / ".run.lock").exists()
