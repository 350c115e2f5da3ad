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


@pytest.mark.slow
def test_each_line_a_worker_prints_reaches_the_console_once(run):
    _, _, log = run  # Ray Train's print patch teed every line a second time
    for text in ("step 6: loss=", "rrg: stage 1/1 'main'", "checkpoints/step_0000003"):
        assert sum(text in line for line in log.splitlines()) == 1, (text, log[-3000:])


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
    (out / "result.json").unlink()  # the copied run's: a training that ran would write it again
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
    out = tmp_path / "nan"  # the torchrun backend: a worker's known error reaches the CLI as its one line
    proc = rrg(["train", TINY, "cluster.backend=torchrun", "cluster.num_workers=1", f"data.shards_dir={shards}",
                f"output_dir={out}", "train.lr=1e30", "checkpoint.every_steps=1", "checkpoint.keep_last=2",
                "train.max_nonfinite_steps=2"], env=env_offline(tmp_path))
    log, _ = proc.communicate(timeout=300)
    code, line = proc.returncode, [ln for ln in log.splitlines() if ln.startswith("rrg: ")][-1]
    assert code == 6 and "not finite" in line and "worker_errors.log" in line, line
    assert "Traceback" not in log and "ChildFailedError" not in log, log[-4000:]  # neither the worker's nor torchrun's
    assert sum("not finite" in ln for ln in log.splitlines() if ln.startswith("rrg: ")) == 1, log[-3000:]
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    first_bad = min(r["step"] for r in records if set(r) == {"step", "loss"} and not r["loss"] < float("inf"))
    saved = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert saved and max(saved) < first_bad, (saved, first_bad)
    assert json.loads((out / "FATAL.json").read_text())["type"] == "NonFiniteError"


def _truncated_copy(shards: str, dest: Path) -> str:
    """A copy of the shards with one training shard cut to a third (the manifest still lists it whole)."""
    shutil.copytree(shards, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    bad = next(s["file"] for s in manifest["shards"] if s["split"] == "train")
    path = dest / bad
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return bad


@pytest.mark.slow
def test_a_bad_shard_is_one_line_exit_3_on_the_driver_and_in_the_workers_and_never_retried(run, shards, tmp_path):
    run_dir, _, _ = run
    bad = _truncated_copy(shards, tmp_path / "shards")
    common = [f"data.shards_dir={tmp_path / 'shards'}", RAY_TMP, "cluster.max_failures=2"]

    fresh = tmp_path / "fresh"  # a new run trains its tokenizer on the driver, through the verified reader
    code, line = _one_line(rrg(["train", TINY, f"output_dir={fresh}", *common], env=env_offline(tmp_path)))
    assert code == 3 and bad in line, line
    assert not [p for p in fresh.rglob("*") if p.is_file() and p.parent.name in ("checkpoints", "tokenizer")]

    out = tmp_path / "resumed"  # a resumed run has its tokenizer: the workers are the first to read
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("ray", "wandb"))
    proc = rrg(["train", TINY, "train.max_steps=40", f"output_dir={out}", *common], env=env_offline(tmp_path))
    log, _ = proc.communicate(timeout=600)
    lines = [ln for ln in log.splitlines() if ln.startswith("rrg: ")]
    errors = [ln for ln in lines if bad in ln]
    assert proc.returncode == 3 and len(errors) == 1 and errors[0] == lines[-1], log[-4000:]  # printed once, last
    fatal = json.loads((out / "FATAL.json").read_text())
    assert fatal["type"] == "DataError" and fatal["exit_code"] == 3
    # the worker's traceback is in the log file the line names, not on the console
    assert f"traceback: {out / 'logs' / 'worker_errors.log'}]" in errors[0]
    assert "Traceback" not in log and "Error in training function" not in log, log[-4000:]
    assert "Traceback (most recent call last)" in (out / "logs" / "worker_errors.log").read_text()
    # a known error is not retried: one worker group, although cluster.max_failures=2
    assert log.count("Started training worker group") == 1, log[-4000:]
    assert "[FailurePolicy]" not in log
    assert not (out / "result.json").exists()


def _ray_head(tmp_path: Path, cpus: int) -> tuple[subprocess.Popen, str, dict]:
    from tests.test_multinode import ray_start, wait_nodes
    from tests.trainkit import free_port

    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"), PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
    (tmp_path / "token").write_text(os.urandom(16).hex())
    address = f"127.0.0.2:{free_port()}"
    head = ray_start(env, ["--head", "--include-dashboard=false", "--node-ip-address=127.0.0.2",
                           f"--port={address.split(':')[1]}", "--temp-dir=/tmp/rr-st", f"--num-cpus={cpus}"],
                     tmp_path / "head.log")
    wait_nodes(env, address, 1, tmp_path / "head.log")
    return head, address, env


_HOG = """
import sys, ray
ray.init(address=sys.argv[1], _node_ip_address="127.0.0.2")
@ray.remote(num_cpus=2)
class Hog:
    def ping(self):
        return 1
hog = Hog.options(name="hog", lifetime="detached").remote()
ray.get(hog.ping.remote())
"""


@pytest.mark.slow
def test_workers_without_resources_fail_after_the_start_timeout_and_sigterm_stops_the_wait(shards, tmp_path):
    import signal
    import time

    head, address, env = _ray_head(tmp_path, cpus=2)
    try:  # another job holds both CPUs: the totals fit, the workers can never start
        hog = subprocess.run([sys.executable, "-c", _HOG, address], env=env, capture_output=True, text=True,
                             timeout=120)
        assert hog.returncode == 0, hog.stderr[-3000:]
        common = [TINY, f"data.shards_dir={shards}", "cluster.num_workers=2", "--address", address]
        t0 = time.time()
        code, line = _one_line(rrg(["train", *common, f"output_dir={tmp_path / 'a'}", "cluster.start_timeout_s=8"],
                                   env=env), timeout=240)
        assert code == 7 and "did not get their resources" in line and "start_timeout_s=8" in line, line
        assert time.time() - t0 < 150

        out = tmp_path / "b"
        proc = rrg(["train", *common, f"output_dir={out}"], env=env)  # default timeout: 600 s
        deadline = time.time() + 120
        while not (out / "config.yaml").is_file():  # prepared: now waiting for the workers' resources
            assert time.time() < deadline and proc.poll() is None, "the run never got to start its workers"
            time.sleep(0.5)
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        code, line = _one_line(proc, timeout=120)
        assert code == 75 and "during start-up" in line, line
    finally:  # `ray start --block` runs in its own session: stopping it stops the head node
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_full_disk_in_the_workers_is_one_line_exit_5_without_tracebacks_or_retries(shards, tmp_path):
    """The full-disk probe without a small file system: every checkpoint that appears gets a sparse 8 TiB
    file (no blocks on disk), so the next save's free-space check (the previous checkpoint's size +5%)
    fails in every worker, as it does when the disk fills up."""
    import time

    out = tmp_path / "full"
    proc = rrg(["train", TINY, "train.max_steps=60", "checkpoint.every_steps=2", "checkpoint.keep_last=10",
                f"data.shards_dir={shards}", f"output_dir={out}", RAY_TMP, "cluster.max_failures=2"],
               env=env_offline(tmp_path))
    padded: set[str] = set()
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
    reader.start()  # a full pipe would stall the run
    try:
        while proc.poll() is None:
            for ck in (out / "checkpoints").glob("step_*"):
                if ck.name not in padded:
                    with open(ck / "pad", "wb") as f:
                        f.truncate(1 << 43)  # 8 TiB apparent (ext4 allows 16), no block written
                    padded.add(ck.name)
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(60)
    log = output[0]
    lines = [ln for ln in log.splitlines() if ln.startswith("rrg: ")]
    assert proc.returncode == 5, log[-4000:]
    assert "cannot write a checkpoint to" in lines[-1] and "MiB free" in lines[-1] and "[Errno" not in lines[-1]
    assert f"traceback: {out / 'logs' / 'worker_errors.log'}]" in lines[-1]
    assert sum("cannot write a checkpoint" in ln for ln in lines) == 1, lines
    assert "Traceback" not in log and log.count("Started training worker group") == 1, log[-4000:]
    assert "StorageError" in (out / "logs" / "worker_errors.log").read_text()
    assert json.loads((out / "FATAL.json").read_text())["exit_code"] == 5
