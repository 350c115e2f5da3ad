"""Two Ray nodes on loopback (head 127.0.0.2, worker node 127.0.0.3): ``rrg train --address`` with one
worker per node, then the worker node's raylet is killed, the node restarted, and the run resumes from
the last checkpoint on storage both nodes see."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainkit import ROOT, TINY, free_port, result, rrg, step_losses, wait_for_step

STEPS = 60
RAY = str(Path(sys.executable).parent / "ray")


def ray_start(env: dict, args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen([RAY, "start", "--block", "--num-cpus=1", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def raylet_of(node_ip: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"raylet/raylet .*--node_ip_address={node_ip} "], capture_output=True,
                         text=True).stdout.split()
    assert out, f"no raylet for {node_ip}"
    return int(out[0])


def wait_nodes(env: dict, address: str, count: int, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True)
        if status.stdout.count(" node_") >= count:
            return
        time.sleep(1)
    raise AssertionError(f"fewer than {count} Ray nodes joined {address}:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_two_loopback_nodes_train_and_survive_a_node_kill(shards, tmp_path):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1",  # Ray refuses multi-node on one host otherwise
               RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"), PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
    (tmp_path / "token").write_text(os.urandom(16).hex())
    port = free_port()
    address = f"127.0.0.2:{port}"
    head = ["--head", "--include-dashboard=false", "--node-ip-address=127.0.0.2", f"--port={port}",
            "--temp-dir=/tmp/rr-cl2"]
    nodes = [ray_start(env, head, tmp_path / "head.log")]
    try:
        wait_nodes(env, address, 1, tmp_path / "head.log")
        nodes.append(ray_start(env, [f"--address={address}", "--node-ip-address=127.0.0.3"], tmp_path / "node.log"))
        wait_nodes(env, address, 2, tmp_path / "node.log")
        out = tmp_path / "run"  # one filesystem: the checkpoint is where both nodes see it
        proc = rrg(["train", TINY, f"train.max_steps={STEPS}", "checkpoint.every_steps=10", "cluster.num_workers=2",
                    f"data.shards_dir={shards}", f"output_dir={out}", "cluster.max_failures=3",
                    "--address", address], env=env)
        wait_for_step(out, 14, proc, timeout=400)  # past the step-10 checkpoint
        os.kill(raylet_of("127.0.0.3"), signal.SIGKILL)  # the node dies
        try:
            nodes[1].wait(timeout=60)  # `ray start --block` exits when its raylet dies
        except subprocess.TimeoutExpired:
            os.killpg(nodes[1].pid, signal.SIGKILL)
            nodes[1].wait(timeout=30)
        nodes[1] = ray_start(env, [f"--address={address}", "--node-ip-address=127.0.0.3"],  # the node comes back
                             tmp_path / "node.log")
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, log[-5000:]
        assert "node_rank=0" in log and "node_rank=1" in log, "workers were not spread over both nodes"
        assert result(out)["step"] == STEPS
        assert "resumed from" in log, log[-5000:]
        assert sorted(step_losses(out)) == list(range(1, STEPS + 1))
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
