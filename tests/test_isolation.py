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


def _run_all(procs: dict) -> dict:
    """Wait for every process at once; name -> (returncode, log, end time)."""
    out = {}

    def wait(name, proc):
        log, _ = proc.communicate(timeout=900)
        out[name] = (proc.returncode, log, time.time())

    threads = [threading.Thread(target=wait, args=item) for item in procs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.slow
def test_two_trainings_and_an_eval_at_once_each_finish_with_the_solo_results(shards, tmp_path):
    solo = tmp_path / "solo"
    torchrun(2, TRAIN + [f"data.shards_dir={shards}", f"output_dir={solo}"])  # bit-identical to a Ray run
    reference = step_losses(solo)
    assert sorted(reference) == list(range(1, STEPS + 1))
    ev = ["eval", TINY, f"data.shards_dir={shards}", f"output_dir={solo}", *EVAL]
    (code, log, _), = _run_all({"eval": rrg([*ev, "--out", str(tmp_path / "eval-solo")])}).values()
    assert code == 0, log[-4000:]

    env = env_offline(tmp_path)
    started = time.time()
    procs = {name: rrg(["train", TINY, *TRAIN, f"data.shards_dir={shards}", f"output_dir={tmp_path / name}"], env=env)
             for name in ("a", "b")}
    procs["eval"] = rrg([*ev, "--out", str(tmp_path / "eval-busy")])
    # meanwhile, a third training into a's directory is refused at once by a's run lock
    lock = tmp_path / "a" / ".run.lock"
    while not lock.is_file():
        assert procs["a"].poll() is None, "a ended before it took its run lock"
        time.sleep(0.2)
    a_started = time.time()
    (code, log, _), = _run_all({"dup": rrg(["train", TINY, *TRAIN, f"data.shards_dir={shards}",
                                            f"output_dir={tmp_path / 'a'}"], env=env)}).values()
    line = [ln for ln in log.splitlines() if ln.startswith("rrg: ")][-1]
    assert code == 4 and f"pid {procs['a'].pid} on" in line and "in use by another training run" in line, log[-3000:]
    assert procs["a"].poll() is None and procs["b"].poll() is None, "a or b ended before the probe: no overlap"

    done = _run_all(procs)
    for name, (code, log, _) in done.items():
        assert code == 0, f"{name}:\n{log[-5000:]}"
        assert "Found multiple active Ray instances" not in log, f"{name} went looking for a cluster:\n{log[-3000:]}"
        assert "PlacementGroupCleaner" not in log
    assert done["eval"][2] > a_started > started, "the evaluation did not overlap the trainings"
    assert step_losses(tmp_path / "a") == reference == step_losses(tmp_path / "b")
    for file in ("predictions.jsonl", "metrics.json"):
        assert (tmp_path / "eval-busy" / file).read_text() == (tmp_path / "eval-solo" / file).read_text(), file
    assert json.loads((tmp_path / "eval-busy" / "metrics.json").read_text())
    assert not (tmp_path / "a" / ".run.lock").exists() and not (tmp_path / "b" / ".run.lock").exists()
