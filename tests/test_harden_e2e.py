"""Hardening end to end, on one short Ray run: loopback-only sockets, hostile checkpoints, run-dir guards."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.trainkit import ROOT, TINY, env_offline, result, rrg

RAY_TMP = "cluster.ray_temp_dir=/tmp/rr-hd"


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(root: int) -> set[int]:
    kids, out, todo = _children_map(), set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += kids.get(pid, [])
    return out


def _is_loopback(hex_addr: str) -> bool:
    if len(hex_addr) == 8:  # IPv4, little-endian per 32-bit word
        return hex_addr[6:8] == "7F"
    return hex_addr == "0" * 24 + "01000000" or (hex_addr[:24] == "0000000000000000FFFF0000" and hex_addr[30:] == "7F")


def listening_sockets(pids: set[int]) -> list[tuple[int, str, bool]]:
    """(pid, local address, loopback?) of every listening TCP socket the processes hold (/proc)."""
    owner: dict[int, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owner[int(link[8:-1])] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            addr, state, inode = parts[1], parts[3], int(parts[9])
            if state == "0A" and inode in owner:
                host, port = addr.split(":")
                found.append((owner[inode], f"{host}:{int(port, 16)}", _is_loopback(host)))
    return found


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory):
    """A 2-worker Ray run; every listening socket of its process tree is sampled while it runs."""
    out = tmp_path_factory.mktemp("hardened") / "run"
    proc = rrg(["train", TINY, "train.max_steps=6", "checkpoint.every_steps=3", f"data.shards_dir={shards}",
                f"output_dir={out}", RAY_TMP], env=env_offline(out.parent))
    seen: set[tuple[int, str, bool]] = set()
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            seen.update(listening_sockets(_tree(proc.pid)))
            stop.wait(0.3)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log, _ = proc.communicate(timeout=600)
    stop.set()
    sampler.join()
    assert proc.returncode == 0, log[-5000:]
    return out, seen, log


@pytest.mark.slow
def test_every_socket_of_a_training_job_listens_on_loopback_only(run):
    out, seen, _ = run
    ranks = {int(p.read_text()) for p in (out / "pids").glob("rank_*.pid")}
    assert len(ranks) == 2
    assert any(pid in ranks for pid, _, _ in seen), f"no worker listener observed (store/gloo): {sorted(seen)}"
    exposed = sorted((pid, addr) for pid, addr, loop in seen if not loop)
    assert not exposed, f"sockets listening beyond loopback: {exposed}"
    assert result(out)["skipped_samples"] == 0  # summed over ranks; the key is always there


class Payload:
    """Unpickling this creates the marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_copy(run_dir: Path, dest: Path, marker: Path, rehash: bool) -> Path:
    import torch

    from configs.atomic import atomic_write_text
    from trainer.safe_load import write_complete

    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("ray", "wandb"))
    ck = dest / "checkpoints" / (dest / "checkpoints" / "latest").read_text().strip()
    states = ck / "ds" / "mp_rank_00_model_states.pt"
    state = torch.load(states, weights_only=True)
    state["extra"] = Payload(str(marker))
    torch.save(state, states)
    if rehash:  # hashes prove integrity, not origin: an attacker can recompute them
        write_complete(ck, ck.name, atomic_write_text)
    return ck


def _one_line(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str]:
    log, _ = proc.communicate(timeout=timeout)
    return proc.returncode, [line for line in log.splitlines() if line.startswith("rrg: ")][-1:][0] if "rrg: " in log else log[-3000:]


@pytest.mark.slow
def test_crafted_checkpoint_is_refused_by_eval_and_train_and_never_runs(run, shards, tmp_path):
    run_dir, _, _ = run
    marker = tmp_path / "PWNED"
    common = [f"data.shards_dir={shards}", RAY_TMP, "eval.bootstrap=0"]

    ck = _hostile_copy(run_dir, tmp_path / "tampered", marker, rehash=False)
    code, line = _one_line(rrg(["eval", TINY, "--checkpoint", str(ck), f"output_dir={ck.parent.parent}", *common]))
    assert code == 4 and "does not match its recorded sha256" in line, line

    ck = _hostile_copy(run_dir, tmp_path / "rehashed", marker, rehash=True)
    code, line = _one_line(rrg(["eval", TINY, "--checkpoint", str(ck), f"output_dir={ck.parent.parent}", *common]))
    assert code == 4 and "refusing to unpickle" in line and "--trust-checkpoint" in line, line
    out = ck.parent.parent
    code, line = _one_line(rrg(["train", TINY, "--resume", str(ck), f"output_dir={out}", "cluster.max_failures=2",
                                *common], env=env_offline(tmp_path)))
    assert code == 4 and "refusing to unpickle" in line, line
    assert not marker.exists(), "the checkpoint's payload ran"
    assert not (out / "result.json").exists()


@pytest.mark.slow
def test_run_dir_guards_refuse_before_writing(run, shards, tmp_path):
    run_dir, _, _ = run
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("ray", "wandb"))
    config_before = (out / "config.yaml").read_bytes()
    common = [f"data.shards_dir={shards}", f"output_dir={out}", RAY_TMP]

    code, line = _one_line(rrg(["train", TINY, "--resume", "none", *common]))
    assert code == 4 and "step_0000006" in line and "--overwrite" in line, line
    code, line = _one_line(rrg(["train", TINY, "model.lm.hf_config.hidden_size=128", *common]))
    assert code == 4 and "model.lm.hf_config.hidden_size (64 in the checkpoint, 128 now)" in line, line
    assert (out / "config.yaml").read_bytes() == config_before, "config.yaml changed before the check"

    code, line = _one_line(rrg(["train", TINY, "cluster.num_workers=1000", *common]))
    assert code == 2 and "cluster.num_workers" in line and "the Ray cluster has" in line, line
    shadow = tmp_path / "shadow"
    shadow.write_text("not a directory")
    code, line = _one_line(rrg(["train", TINY, f"data.shards_dir={shards}", f"output_dir={shadow}", RAY_TMP]))
    assert code == 5 and "is not a directory" in line, line


@pytest.mark.slow
def test_diverging_run_stops_without_checkpointing_nan_state(shards, tmp_path):
    from tests.trainkit import free_port

    out = tmp_path / "nan"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "trainer.worker", TINY, f"data.shards_dir={shards}",
           f"output_dir={out}", "train.lr=1e30", "checkpoint.every_steps=1", "checkpoint.keep_last=2",
           "train.max_nonfinite_steps=2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "NonFiniteError" in proc.stderr, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    first_bad = min(r["step"] for r in records if set(r) == {"step", "loss"} and not r["loss"] < float("inf"))
    saved = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert saved and max(saved) < first_bad, (saved, first_bad)
    assert json.loads((out / "FATAL.json").read_text())["type"] == "NonFiniteError"
