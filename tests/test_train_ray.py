"""The main job through Ray: worker death, preemption (SIGTERM), crash during a checkpoint save."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.trainkit import ROOT, TINY, env_offline, result, rrg, step_losses, torchrun, wait_for_step

STEPS = 100  # long enough that a SIGTERM at step 7 or a SIGKILL after step 30 lands mid-run (tiny steps: ~0.1 s)
LONG = [f"train.max_steps={STEPS}", "checkpoint.every_steps=25", "cluster.num_workers=2"]


@pytest.fixture(scope="module")
def baseline(shards, tmp_path_factory) -> dict[int, float]:
    """The uninterrupted run's per-step losses (torchrun; Ray gives bit-identical numbers)."""
    out = tmp_path_factory.mktemp("baseline")
    torchrun(2, LONG + [f"data.shards_dir={shards}", f"output_dir={out}"])
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.slow
def test_killed_worker_is_restarted_and_run_matches_uninterrupted(shards, baseline, tmp_path):
    out = tmp_path / "killed"
    proc = rrg(["train", TINY, *LONG, f"data.shards_dir={shards}", f"output_dir={out}", "cluster.max_failures=2"],
               env=env_offline(tmp_path))
    wait_for_step(out, 30, proc)  # past the step-25 checkpoint: the restarted group resumes from it
    pid = int((out / "pids" / "rank_1.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-5000:]
    assert result(out)["step"] == STEPS
    assert int((out / "pids" / "rank_1.pid").read_text()) != pid, "worker group was not restarted"
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    step26 = [r for r in records if set(r) == {"step", "loss"} and r["step"] == 26]
    assert len(step26) == 2, "the restart did not resume from the step-25 checkpoint"
    assert step_losses(out)[STEPS] == baseline[STEPS]


@pytest.mark.slow
def test_sigterm_publishes_checkpoint_and_resume_loses_no_step(shards, baseline, tmp_path):
    out = tmp_path / "preempted"
    args = ["train", TINY, *LONG, f"data.shards_dir={shards}", f"output_dir={out}", "logging.wandb.mode=offline"]
    env = env_offline(tmp_path)
    proc = rrg(args, env=env)
    wait_for_step(out, 7, proc)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, log[-5000:]
    res = result(out)
    assert res["preempted"] and res["step"] >= 7
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert (ckpt / "COMPLETE").is_file() and ckpt.name == f"step_{res['step']:07d}"
    stopped_at = res["step"]

    proc = rrg(args, env=env)  # the same command again, as a requeued job would
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-5000:]
    assert f"resumed from {ckpt}" in log
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1)), "a step was lost"
    assert [losses[s] for s in range(stopped_at + 1, STEPS + 1)] == \
           [baseline[s] for s in range(stopped_at + 1, STEPS + 1)]
    runs = {p.name.rsplit("-", 1)[-1] for p in (tmp_path / "wandb").glob("offline-run-*")}
    assert runs == {(out / "wandb_run_id").read_text().strip()}, "W&B run split on resume"


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, time, torch
    from types import SimpleNamespace
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from trainer.config import TrainConfig
    from trainer.strategy import DeepSpeedStrategy
    from trainer.checkpoint import CheckpointManager, DS_TAG
    class M(torch.nn.Module):
        def __init__(s):
            super().__init__(); s.a = torch.nn.Linear(64, 64)
        def forward(s, x):
            return SimpleNamespace(loss=s.a(x).square().mean())
    DeepSpeedStrategy.init_distributed(False)
    st = DeepSpeedStrategy(TrainConfig(zero_stage=2, max_steps=10), world_size=1, rank=0, use_gpu=False)
    torch.manual_seed(0)
    st.setup(M())
    ck = CheckpointManager(sys.argv[1], rank=0, world_size=1, keep_last=int(sys.argv[4]))
    mode = sys.argv[3]
    if mode == "save":
        st.backward_and_step(st.forward({"x": torch.ones(2, 64)}).loss)
        ck.save(1, write_shards=st.save, meta={"w": float(st.engine.module.a.weight.sum())}, client={})
        st.backward_and_step(st.forward({"x": torch.ones(2, 64)}).loss)
        def slow_write(directory, tag):
            st.save(directory, tag)
            print("WRITING", flush=True)
            time.sleep(60)
        ck.save(2, write_shards=slow_write, meta={}, client={})
    elif mode == "prune":  # killed while the background thread removes the pruned step 1
        import shutil, trainer.checkpoint as tc
        def slow_rmtree(path, *a, **k):
            if os.path.basename(path).startswith(".trash-") and os.path.exists(path):
                print("PRUNING", flush=True)
                time.sleep(60)
            shutil.rmtree(path, *a, **k)
        tc.shutil = SimpleNamespace(rmtree=slow_rmtree)
        for step in (1, 2):
            st.backward_and_step(st.forward({"x": torch.ones(2, 64)}).loss)
            ck.save(step, write_shards=st.save, meta={"w": float(st.engine.module.a.weight.sum())}, client={})
        time.sleep(60)
    else:
        point = ck.resolve("auto")
        st.load(str(point.path), DS_TAG)
        print("LOADED", point.step, float(st.engine.module.a.weight.sum()) == point.meta["w"], flush=True)
        ck.save(point.step + 1, write_shards=st.save, meta={}, client={})
        ck.wait()
        print("LEFT", sorted(os.listdir(sys.argv[1])), flush=True)
""")


def _crash_run(script, ckdir, mode: str, keep: int, kill_at: str) -> None:
    """Run the script's ``mode`` and SIGKILL it when it prints ``kill_at``."""
    from tests.trainkit import free_port

    proc = subprocess.Popen([sys.executable, str(script), str(ckdir), str(free_port()), mode, str(keep)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith(kill_at):
            proc.kill()
            break
    proc.wait(timeout=60)


def _crash_load(script, ckdir, keep: int) -> str:
    from tests.trainkit import free_port

    out = subprocess.run([sys.executable, str(script), str(ckdir), str(free_port()), "load", str(keep)], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    return out.stdout + out.stderr


def test_crash_during_save_keeps_previous_checkpoint(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    ckdir = tmp_path / "ck"
    _crash_run(script, ckdir, "save", 2, kill_at="WRITING")  # SIGKILL while step 2's shards sit in the temp dir
    assert (ckdir / ".tmp-step_0000002").is_dir(), "the interrupted save left no trace to test against"
    assert (ckdir / "latest").read_text().strip() == "step_0000001"
    out = _crash_load(script, ckdir, 2)
    assert "LOADED 1 True" in out, out
    assert "LEFT ['latest', 'step_0000001', 'step_0000002']" in out, out  # the torn temp dir was cleaned


def test_kill_during_background_prune_leaves_the_new_checkpoint_loadable(tmp_path):
    """Old checkpoints are removed by a thread while training goes on; SIGKILL in the middle of it."""
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    ckdir = tmp_path / "ck"
    _crash_run(script, ckdir, "prune", 1, kill_at="PRUNING")
    assert sorted(p.name for p in ckdir.iterdir()) == [".trash-step_0000001", "latest", "step_0000002"]
    out = _crash_load(script, ckdir, 1)
    assert "LOADED 2 True" in out, out  # the published checkpoint, hash-verified
    assert "LEFT ['latest', 'step_0000003']" in out, out  # the next save's pruning removed the trash
