"""scripts/device_check.sh, the one prepared GPU check: its dry run (plan + pinned wheel set within 60 MiB) and,
at tiny sizes on CPU, every step it runs on the GPU machine (attention vs eager, packed = unpacked, the timed
training cases, bit-exact resume) writing device_report.json."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.trainkit import ROOT


def test_dry_run_prints_the_plan_and_a_wheel_set_within_60_mib():
    proc = subprocess.run([str(ROOT / "scripts" / "device_check.sh"), "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for step in ("install", "attention", "packed_vs_unpacked", "train", "resume", "report"):
        assert re.search(rf"^  {step}\s+~\s*\d+ s", out, re.M), step
    m = re.search(r"(\d+) wheels, ([\d.]+) MiB \(budget 60 MiB\)", out)
    assert m and 0 < float(m.group(2)) <= 60, out
    lock = json.loads((ROOT / "scripts" / "device_wheels.lock.json").read_text())
    assert int(m.group(1)) == len(lock["wheels"]) and lock["python"] == "3.12"
    names = {w["file"].split("-")[0].lower() for w in lock["wheels"]}
    assert {"deepspeed", "webdataset", "transformers", "peft", "pydantic"} <= names  # what the device lacks
    assert all(re.fullmatch(r"[0-9a-f]{64}", w["sha256"]) and w["bytes"] > 0 for w in lock["wheels"])


@pytest.mark.slow
def test_cpu_smoke_run_of_every_device_step(tmp_path):
    proc = subprocess.run([str(ROOT / "scripts" / "device_check.sh"), "--device", "cpu", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "device_report.json").read_text())
    assert report["device"] == "cpu" and report["summary"]["resume_bit_exact"]
    assert all(a["ok"] for a in report["attention"]) and {a["layout"] for a in report["attention"]} == {"packed", "padded"}
    assert report["packed_vs_unpacked"]["ok"] and report["packed_vs_unpacked"]["rows_packed"] < 6
    train = report["train"]
    assert len(train) == 6 and all(r["ok"] for r in train), [r.get("error") for r in train]
    assert {(r["mode"], r["zero"]) for r in train} >= {("full", 2), ("lora", 2), ("full", 3), ("lora", 3)}
    assert all(r["tokens_per_s"] > 0 and r["flops_per_step"] > 0 for r in train)
    s = report["summary"]
    assert s["zero2"]["lora_over_full_tokens_per_s"] > 0 and "packed_step_s_varlen_over_dense_sdpa" in s
