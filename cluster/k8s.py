"""``rrg submit k8s``: a KubeRay ``RayJob`` (ray.io/v1) from a run config, validated offline, applied with kubectl.

What is emitted: a ConfigMap holding the fully resolved run config, and a
RayJob whose head pod mounts it and runs ``rrg train /etc/rrg/run.yaml
--resume auto`` (KubeRay sets RAY_ADDRESS for the entrypoint, so the driver
joins the job's own cluster).  One worker pod per Ray Train worker.  Shards
and outputs live on a ReadWriteMany PVC mounted on every pod
(``cluster.k8s.volume_claim``) or on object storage (``s3://``; credentials from
``cluster.k8s.s3_secret``).  A RayJob that fails is retried ``backoffLimit``
times on a new cluster; ``--resume auto`` makes each retry continue from the
latest checkpoint.

Validation is twofold and works offline: the manifest against the RayJob
CRD's own openAPIV3 schema (a copy of KubeRay's CRD ships in
cluster/kuberay/, Apache-2.0), then the operator-side rules the schema does
not carry (ray-operator's validation.go).  Errors name the field path.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

CRD_PATH = Path(__file__).resolve().parent / "kuberay" / "ray.io_rayjobs.yaml"
CONFIG_MOUNT = "/etc/rrg"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LEN = 47  # KubeRay appends suffixes to the RayJob name for its cluster and submitter


class ManifestError(ValueError):
    """A generated or user-edited RayJob manifest that KubeRay would reject; names the field."""


def job_name(cfg: Any) -> str:
    """``cluster.k8s.job_name`` or ``rrg-<run name>`` made into a DNS-1035 label."""
    name = cfg.cluster.k8s.job_name or f"rrg-{cfg.name}"
    name = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return name[:MAX_NAME_LEN].rstrip("-")


def _ray_version() -> str:
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "2.60.0"


def _container(cfg: Any, name: str, resources: dict, env: list[dict]) -> dict:
    k8s = cfg.cluster.k8s
    mounts = [{"name": "run-config", "mountPath": CONFIG_MOUNT, "readOnly": True}]
    if k8s.volume_claim:
        mounts.append({"name": "data", "mountPath": k8s.mount_path})
    container = {"name": name, "image": k8s.image, "resources": {"requests": resources, "limits": resources},
                 "env": env, "volumeMounts": mounts}
    if k8s.s3_secret:
        container["envFrom"] = [{"secretRef": {"name": k8s.s3_secret}}]
    return container


def _pod_template(cfg: Any, container: dict, config_map: str) -> dict:
    volumes = [{"name": "run-config", "configMap": {"name": config_map}}]
    if cfg.cluster.k8s.volume_claim:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": cfg.cluster.k8s.volume_claim}})
    return {"metadata": {"labels": {"app.kubernetes.io/name": "rrg", "rrg/run": job_name(cfg)}},
            "spec": {"containers": [container], "volumes": volumes}}


def build_manifests(cfg: Any) -> list[dict]:
    """[ConfigMap, RayJob] for ``cfg`` (a validated RunConfig)."""
    k8s, name = cfg.cluster.k8s, job_name(cfg)
    config_map = f"{name}-config"
    env = [{"name": "RRG_JOB_ID", "value": name}, {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
           {"name": "RRG_K8S_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    head_res = {"cpu": k8s.head_cpus, "memory": k8s.head_memory}
    worker_res: dict[str, Any] = {"cpu": str(cfg.cluster.cpus_per_worker).removesuffix(".0"),
                                  "memory": k8s.worker_memory}
    if cfg.cluster.use_gpu and k8s.gpus_per_worker:
        worker_res["nvidia.com/gpu"] = str(k8s.gpus_per_worker)
    replicas = cfg.cluster.num_workers
    spec: dict[str, Any] = {
        "entrypoint": f"rrg train {CONFIG_MOUNT}/run.yaml --resume auto",
        "shutdownAfterJobFinishes": k8s.shutdown_after_job_finishes,
        "ttlSecondsAfterFinished": k8s.ttl_seconds_after_finished,
        "backoffLimit": k8s.backoff_limit,
        "rayClusterSpec": {
            "rayVersion": _ray_version(),
            "headGroupSpec": {"rayStartParams": {},
                              "template": _pod_template(cfg, _container(cfg, "ray-head", head_res, env), config_map)},
            "workerGroupSpecs": [{
                "groupName": "train", "replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas,
                "rayStartParams": {},
                "template": _pod_template(cfg, _container(cfg, "ray-worker", worker_res, env), config_map),
            }],
        },
    }
    if k8s.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = k8s.active_deadline_seconds
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "rrg", "rrg/run": name}}
    cm_meta: dict[str, Any] = {"name": config_map, "labels": dict(meta["labels"])}
    if k8s.namespace:
        meta["namespace"] = cm_meta["namespace"] = k8s.namespace
    run = cfg.to_dict()
    # a retry on a new RayCluster may start while the evicted pod's lock (trainer/runlock.py) still looks
    # alive on the shared volume: it waits for that lock to go silent instead of failing at once
    ck = run["checkpoint"]
    ck["lock_wait_s"] = max(float(ck.get("lock_wait_s") or 0), 2 * float(ck.get("lock_stale_s") or 120))
    run_yaml = yaml.safe_dump(run, sort_keys=False)
    return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": cm_meta, "data": {"run.yaml": run_yaml}},
            {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta, "spec": spec}]


@lru_cache(maxsize=1)
def rayjob_schema() -> dict:
    """The v1 openAPIV3 schema from the shipped KubeRay CRD."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(CRD_PATH.read_text(), Loader=loader)
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return version["schema"]["openAPIV3Schema"]
    raise ManifestError(f"{CRD_PATH}: no v1 version in the RayJob CRD")


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(root)"


def schema_errors(manifest: dict) -> list[str]:
    from jsonschema import Draft7Validator

    validator = Draft7Validator(rayjob_schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


def operator_errors(manifest: dict) -> list[str]:
    """The ray-operator's own checks (validation.go) that the CRD schema does not express."""
    errs: list[str] = []
    name = (manifest.get("metadata") or {}).get("name", "")
    if not isinstance(name, str) or not _DNS1035.match(name):
        errs.append(f"metadata.name: {name!r} is not a DNS-1035 label (lower-case letters, digits, '-', "
                    "starting with a letter)")
    elif len(name) > MAX_NAME_LEN:
        errs.append(f"metadata.name: {name!r} is {len(name)} characters, at most {MAX_NAME_LEN}")
    spec = manifest.get("spec") or {}
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        errs.append("spec.suspend: a suspended RayJob needs spec.shutdownAfterJobFinishes: true")
    for key in ("ttlSecondsAfterFinished", "backoffLimit"):
        if isinstance(spec.get(key), int) and spec[key] < 0:
            errs.append(f"spec.{key}: must be >= 0, got {spec[key]}")
    if isinstance(spec.get("activeDeadlineSeconds"), int) and spec["activeDeadlineSeconds"] <= 0:
        errs.append(f"spec.activeDeadlineSeconds: must be > 0, got {spec['activeDeadlineSeconds']}")
    has_cluster, has_selector = bool(spec.get("rayClusterSpec")), bool(spec.get("clusterSelector"))
    if has_cluster == has_selector:
        errs.append("spec.rayClusterSpec: exactly one of rayClusterSpec or clusterSelector must be set")
    backoff = spec.get("backoffLimit")
    if isinstance(backoff, int) and backoff > 0 and (spec.get("submissionMode") == "InteractiveMode" or has_selector):
        errs.append("spec.backoffLimit: must be 0 with InteractiveMode or clusterSelector")
    cluster = spec.get("rayClusterSpec") or {}
    groups = [("spec.rayClusterSpec.headGroupSpec", cluster.get("headGroupSpec") or {})]
    groups += [(f"spec.rayClusterSpec.workerGroupSpecs[{i}]", g) for i, g in enumerate(cluster.get("workerGroupSpecs") or [])]
    for where, group in groups:
        if has_cluster and "rayStartParams" not in group:
            errs.append(f"{where}.rayStartParams: missing (KubeRay up to v1.3 requires it; emit {{}})")
    return errs


def validate_rayjob(manifest: dict) -> None:
    """Raise ManifestError listing every problem, each naming its field."""
    errs = schema_errors(manifest) + operator_errors(manifest)
    if errs:
        raise ManifestError("invalid RayJob manifest:\n  " + "\n  ".join(errs))


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the embedded run.yaml) as readable literal blocks; no YAML anchors."""

    def ignore_aliases(self, data):
        return True


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def render(manifests: list[dict]) -> str:
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False)


def kubectl_configured() -> bool:
    if not shutil.which("kubectl"):
        return False
    proc = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def submit_k8s(cfg: Any, dry_run: bool = False) -> str:
    """Validate, then ``kubectl apply`` (or print when dry-run or no kubectl context). Returns the YAML."""
    manifests = build_manifests(cfg)
    validate_rayjob(manifests[1])
    text = render(manifests)
    if dry_run or not kubectl_configured():
        if not dry_run:
            print("# rrg: no kubectl context configured: printing the manifest instead of applying it")
        print(text, end="")
        return text
    proc = subprocess.run(["kubectl", "apply", "-f", "-"], input=text, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {proc.stderr.strip()}")
    print(proc.stdout, end="")
    return text
