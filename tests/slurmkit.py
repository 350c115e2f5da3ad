"""A real one-machine SLURM cluster for the tests: munged + slurmctld + slurmd on localhost.

Installs ``slurm-wlm`` and ``munge`` from Debian's packages when they are
missing and we are root (as ``make system-deps`` does for chromium).  All
state, sockets, logs and the config live in a private directory; ``SLURM_CONF``
points the client commands at it, so nothing under /etc is touched.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.trainkit import free_port

CONF = """ClusterName=rrgtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5,socket={root}/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def ensure_installed() -> None:
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0:
        raise AssertionError("SLURM tests need slurm-wlm + munge: apt-get install slurm-wlm munge (as root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env, capture_output=True)


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = root
        self.env = dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))

    def start(self) -> "LocalSlurm":
        root = self.root
        for sub in ("state", "spool"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        (root / "slurm.conf").write_text(CONF.format(root=root, ctld_port=free_port(), d_port=free_port()))
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._run(["munged", "--force", f"--socket={root}/munge.sock", f"--key-file={key}",
                   f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed"])
        self._run(["slurmctld", "-i"])
        self._run(["slurmd", "-N", "localhost"])
        deadline = time.time() + 60
        while time.time() < deadline:
            state = self.run(["sinfo", "-h", "-o", "%T"]).stdout.strip()
            if state == "idle":
                return self
            if state.startswith("drain") or state.startswith("down"):
                self.run(["scontrol", "update", "nodename=localhost", "state=resume"])
            time.sleep(1)
        raise AssertionError(f"SLURM node not idle: {self.run(['sinfo']).stdout}\n{self.logs()}")

    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"{cmd[0]} failed: {proc.stderr}\n{self.logs()}")

    def run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)

    def job_state(self, job_id: str) -> str:
        return self.run(["squeue", "-h", "-j", job_id, "-o", "%T"]).stdout.strip()

    def wait_gone(self, job_id: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.job_state(job_id):
                return
            time.sleep(1)
        raise AssertionError(f"job {job_id} still {self.job_state(job_id)} after {timeout}s")

    def logs(self) -> str:
        return "\n".join(p.read_text()[-1500:] for p in self.root.glob("*.log"))

    def stop(self) -> None:
        for job in self.run(["squeue", "-h", "-o", "%i"]).stdout.split():
            self.run(["scancel", job])
            try:
                self.wait_gone(job, 90)  # let slurmd stop the job's steps (and its Ray) before it goes
            except AssertionError:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.root / f"{name}.pid"
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
