"""``rrg submit k8s``: RayJob manifests checked against KubeRay's real CRD schema and the operator's own rules."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.k8s import ManifestError, build_manifests, operator_errors, schema_errors, validate_rayjob
from trainer.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "cluster" / "kuberay" / "ray-job.sample.yaml"  # upstream sample, shipped with the CRD


@pytest.fixture(scope="module")
def rayjob() -> dict:
    cfg = load_config(ROOT / "configs" / "demo.yaml",
                      ["cluster.use_gpu=true", "cluster.k8s.gpus_per_worker=1", "cluster.k8s.volume_claim=rrg-data",
                       "cluster.k8s.s3_secret=rrg-s3", "cluster.k8s.namespace=ml"])
    cm, job = build_manifests(cfg)
    assert cm["kind"] == "ConfigMap" and yaml.safe_load(cm["data"]["run.yaml"])["name"] == "demo"
    return job


def test_dry_run_prints_a_manifest_that_validates():
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", "k8s", "configs/demo.yaml", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert schema_errors(job) == [] and operator_errors(job) == []
    spec = job["spec"]
    assert spec["entrypoint"] == "rrg train /etc/rrg/run.yaml --resume auto"
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 2
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"] == {}
    assert all(g["rayStartParams"] == {} for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    run_yaml = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["run.yaml"])
    assert run_yaml["train"]["max_steps"] == 300  # the resolved demo config travels with the job
    # a retry waits for an evicted pod's run lock to go silent (trainer/runlock.py) rather than failing
    assert run_yaml["checkpoint"]["lock_wait_s"] == 2 * run_yaml["checkpoint"]["lock_stale_s"] == 240


def test_generated_manifest_carries_resources_storage_and_gpus(rayjob):
    validate_rayjob(rayjob)
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert worker["replicas"] == 2
    pod = worker["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "rrg-data"}} in pod["volumes"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "rrg-s3"}}]
    assert rayjob["metadata"]["namespace"] == "ml"


def test_upstream_sample_validates():
    sample = next(d for d in yaml.safe_load_all(SAMPLE.read_text()) if d and d["kind"] == "RayJob")
    assert schema_errors(sample) == [] and operator_errors(sample) == []


def _broken(job: dict, edit) -> dict:
    job = copy.deepcopy(job)
    edit(job)
    return job


BROKEN = {
    "no head template": (lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"].pop("template"),
                         "spec.rayClusterSpec.headGroupSpec: 'template' is a required property"),
    "no worker groupName": (lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
                            "spec.rayClusterSpec.workerGroupSpecs[0]: 'groupName' is a required property"),
    "backoffLimit string": (lambda j: j["spec"].update(backoffLimit="x"), "spec.backoffLimit: 'x' is not of type"),
    "replicas string": (lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="two"),
                        "spec.rayClusterSpec.workerGroupSpecs[0].replicas"),
    "name too long": (lambda j: j["metadata"].update(name="r" * 48), "metadata.name: 'rrrr"),
    "name not DNS-1035": (lambda j: j["metadata"].update(name="1-Run_x"), "is not a DNS-1035 label"),
    "suspend without shutdown": (lambda j: j["spec"].update(suspend=True, shutdownAfterJobFinishes=False),
                                 "spec.suspend: a suspended RayJob needs"),
    "negative TTL": (lambda j: j["spec"].update(ttlSecondsAfterFinished=-1), "spec.ttlSecondsAfterFinished: must be >= 0"),
    "negative backoffLimit": (lambda j: j["spec"].update(backoffLimit=-3), "spec.backoffLimit: must be >= 0"),
    "zero deadline": (lambda j: j["spec"].update(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds: must be > 0"),
    "no cluster": (lambda j: j["spec"].pop("rayClusterSpec"), "exactly one of rayClusterSpec or clusterSelector"),
    "backoff with interactive": (lambda j: j["spec"].update(submissionMode="InteractiveMode"),
                                 "spec.backoffLimit: must be 0 with InteractiveMode"),
    "no rayStartParams": (lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("rayStartParams"),
                          "spec.rayClusterSpec.workerGroupSpecs[0].rayStartParams: missing"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifest_fails_naming_the_field(rayjob, case):
    edit, expected = BROKEN[case]
    with pytest.raises(ManifestError) as err:
        validate_rayjob(_broken(rayjob, edit))
    assert expected in str(err.value), str(err.value)


def test_bad_k8s_config_is_rejected_before_any_manifest():
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", "k8s", "configs/tiny.yaml",
                           "cluster.k8s.backoff_limit=-1", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "cluster.k8s.backoff_limit" in proc.stderr and proc.stdout == ""
