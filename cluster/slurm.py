"""``rrg submit slurm``: one sbatch script that brings up Ray on the job's nodes and trains on the head.

The script (written to ``<output_dir>/slurm/job.sbatch`` and printed by
``--dry-run``) follows Ray's documented SLURM pattern and adds preemption:

1. ``srun --overlap`` starts the Ray head on the first node, then one Ray
   worker node per other node (``ray start --block``), and waits until
   ``ray status`` counts every node;
2. ``rrg train CONFIG --resume auto --address HEAD:PORT`` runs on the head,
   started in the background so that bash runs traps while it ``wait``\\ s;
3. ``#SBATCH --signal=B:USR1@N`` signals only the batch shell, whose trap
   forwards USR1 to the driver: the driver checkpoints and exits 75;
4. Ray is torn down (before a requeue, so the next attempt finds free ports),
   and exit status 75 makes the script ``scontrol requeue`` its own job;
   ``--open-mode=append`` keeps one log across attempts.  The requeued job runs
   the same command and ``--resume auto`` continues from the checkpoint.

Every attempt appends a line (job id, restart count, nodes, head, log path,
then the exit status) to ``<output_dir>/slurm/jobs.jsonl``.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

EXIT_PREEMPTED = 75

_BODY = r"""
set -u
export RAY_USAGE_STATS_ENABLED=0 RRG_JOB_ID="$SLURM_JOB_ID"
RUN_DIR={run_dir}
LOG="$RUN_DIR/slurm/slurm-$SLURM_JOB_ID.out"
RAY_PORT={port}
# Ray token authentication with one secret per run, on storage every node sees (srun passes the env on)
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$RUN_DIR/slurm/ray_auth_token"
[ -s "$RAY_AUTH_TOKEN_PATH" ] || (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$RAY_AUTH_TOKEN_PATH")
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${{NODES[0]}}
record() {{ printf '%s\n' "$1" >> "$RUN_DIR/slurm/jobs.jsonl"; }}
node_ip() {{ srun --overlap -N1 -n1 -w "$1" bash -c {ip_command}; }}
HEAD_IP=$(node_ip "$HEAD")
case "$HEAD_IP" in 127.*) export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0;; esac  # keep a loopback cluster on loopback
record "{{\"job_id\": \"$SLURM_JOB_ID\", \"restart_count\": ${{SLURM_RESTART_COUNT:-0}}, \"nodes\": \"$SLURM_JOB_NODELIST\", \"head\": \"$HEAD\", \"head_ip\": \"$HEAD_IP\", \"log\": \"$LOG\", \"event\": \"start\", \"time\": \"$(date -Is)\"}}"
echo "rrg-slurm: job $SLURM_JOB_ID attempt ${{SLURM_RESTART_COUNT:-0}} on ${{NODES[*]}} (head $HEAD $HEAD_IP)"

RAY_PIDS=()
teardown() {{
  for pid in "${{RAY_PIDS[@]}}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${{RAY_PIDS[@]}}"; do wait "$pid" 2>/dev/null; done
  RAY_PIDS=()
}}
srun --overlap -N1 -n1 -w "$HEAD" ray start --head --block --node-ip-address="$HEAD_IP" --port="$RAY_PORT" \
  --num-cpus="${{SLURM_CPUS_PER_TASK:-{cpus}}}" --num-gpus={gpus} --include-dashboard=false --temp-dir={temp_dir} &
RAY_PIDS+=($!)
sleep 3
for node in "${{NODES[@]:1}}"; do
  srun --overlap -N1 -n1 -w "$node" bash -c "ray start --block --address=$HEAD_IP:$RAY_PORT \
    --node-ip-address=\$({ip_command_inner}) --num-cpus=${{SLURM_CPUS_PER_TASK:-{cpus}}} --num-gpus={gpus}" &
  RAY_PIDS+=($!)
done
deadline=$((SECONDS + {join_timeout}))
while [ "$SECONDS" -lt "$deadline" ]; do
  joined=$(ray status --address="$HEAD_IP:$RAY_PORT" 2>/dev/null | grep -c ' node_')
  [ "$joined" -ge ${{#NODES[@]}} ] && break
  kill -0 "${{RAY_PIDS[0]}}" 2>/dev/null || {{ echo "rrg-slurm: the Ray head exited" >&2; break; }}
  sleep 1
done
if [ "${{joined:-0}}" -lt ${{#NODES[@]}} ]; then
  echo "rrg-slurm: only ${{joined:-0}} of ${{#NODES[@]}} Ray nodes joined within {join_timeout}s" >&2
  teardown; record "{{\"job_id\": \"$SLURM_JOB_ID\", \"event\": \"end\", \"exit\": 1}}"; exit 1
fi
echo "rrg-slurm: $joined Ray node(s) up at $HEAD_IP:$RAY_PORT"

DRIVER=
forward() {{ echo "rrg-slurm: $1 received: forwarding to the driver" >&2; [ -n "$DRIVER" ] && kill -USR1 "$DRIVER" 2>/dev/null; }}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
{train} --address "$HEAD_IP:$RAY_PORT" &
DRIVER=$!
while true; do
  wait "$DRIVER"; rc=$?
  kill -0 "$DRIVER" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
done
teardown
record "{{\"job_id\": \"$SLURM_JOB_ID\", \"restart_count\": ${{SLURM_RESTART_COUNT:-0}}, \"event\": \"end\", \"exit\": $rc, \"time\": \"$(date -Is)\"}}"
if [ "$rc" -eq {preempted} ]; then
  echo "rrg-slurm: checkpointed after preemption: requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
"""


def sbatch_header(cfg: Any, run_dir: Path) -> list[str]:
    s = cfg.cluster.slurm
    lines = [f"--job-name=rrg-{cfg.name}", f"--nodes={s.nodes}", "--ntasks-per-node=1",
             f"--cpus-per-task={s.cpus_per_node}", f"--time={s.time}",
             f"--signal=B:USR1@{s.signal_lead_s}", "--requeue", "--open-mode=append",
             f"--output={run_dir}/slurm/slurm-%j.out"]
    if s.nodes > 1:
        lines.append("--exclusive")
    if s.gpus_per_node:
        lines.append(f"--gpus-per-task={s.gpus_per_node}")
    if s.partition:
        lines.append(f"--partition={s.partition}")
    lines += list(s.extra_sbatch)
    return ["#!/bin/bash"] + [f"#SBATCH {line}" for line in lines]


def render_script(cfg: Any, config_path: Optional[str], overrides: list[str]) -> str:
    """The whole sbatch script for ``cfg`` (a validated RunConfig)."""
    s = cfg.cluster.slurm
    run_dir = Path(cfg.output_dir).resolve()
    train = [*shlex.split(s.rrg), "train"]
    if config_path:
        train.append(str(Path(config_path).resolve()))
    train += [*overrides, f"output_dir={run_dir}", "--resume", "auto"]
    temp_dir = shlex.quote(cfg.cluster.ray_temp_dir) if cfg.cluster.ray_temp_dir else "/tmp/rrg-ray-$SLURM_JOB_ID"
    body = _BODY.format(run_dir=shlex.quote(str(run_dir)), port=s.ray_port, ip_command=shlex.quote(s.ip_command),
                        ip_command_inner=s.ip_command.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$"), cpus=s.cpus_per_node,
                        gpus=s.gpus_per_node, temp_dir=temp_dir, join_timeout=s.join_timeout_s,
                        train=shlex.join(train), preempted=EXIT_PREEMPTED)
    setup = "\n".join(s.setup)
    exports = "\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in s.env.items())
    return "\n".join(sbatch_header(cfg, run_dir)) + "\n" + "\n".join(x for x in (setup, exports) if x) + body


def submit_slurm(cfg: Any, config_path: Optional[str], overrides: list[str], dry_run: bool = False) -> Optional[str]:
    """Write the script to ``<output_dir>/slurm/job.sbatch`` and sbatch it; returns the job id (None if dry run)."""
    script = render_script(cfg, config_path, overrides)
    if dry_run:
        print(script, end="")
        return None
    if not shutil.which("sbatch"):
        raise RuntimeError("sbatch not found: run on a SLURM login node (or use --dry-run to see the script)")
    slurm_dir = Path(cfg.output_dir).resolve() / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    path = slurm_dir / "job.sbatch"
    path.write_text(script)
    path.chmod(0o755)
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {path} failed: {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    print(f"rrg: submitted SLURM job {job_id}: script {path}, log {slurm_dir}/slurm-{job_id}.out", flush=True)
    return job_id
