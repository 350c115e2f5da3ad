"""A non-editable install: the wheel holds the packages, the shipped configs and the KubeRay schema, and an rrg
installed from it builds demo shards and trains from another directory, never reading the checkout."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.trainkit import ROOT, env_offline

PACKAGES = {"configs", "launcher", "trainer", "modeling", "shards", "cluster"}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # the checkout is copied first: building in place would leave build/ and *.egg-info in the work tree
    src = out / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(out), str(src)])
    [whl] = out.glob("*.whl")
    return whl


def test_the_wheel_holds_the_packages_the_shipped_configs_and_the_kuberay_schema(wheel):
    assert wheel.name.startswith("rrg_cxr-")  # "rrg" on the public index is another project
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == PACKAGES, top
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped and shipped <= set(names), sorted(shipped - set(names))
    assert "cluster/kuberay/ray.io_rayjobs.yaml" in names and "cluster/kuberay/LICENSE" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


@pytest.mark.slow
def test_an_installed_rrg_builds_demo_shards_and_trains_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the dependencies (torch, deepspeed, ray, ...) from this environment's site-packages, as a plain path entry:
    # its .pth files (this checkout's editable install among them) are not processed from there
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in env_offline(tmp_path).items() if k != "PYTHONPATH"}
    where = _run([str(py), "-c", "import trainer.config, launcher.cli; print(trainer.config.__file__, "
                                 "trainer.config.DEFAULT_CONFIG)"], cwd=work, env=env).stdout.split()
    assert all(Path(w).is_relative_to(site) for w in where), where  # the installed copy, its own configs
    rrg = str(venv / "bin" / "rrg")
    built = _run([rrg, "demo-data", "tiny"], cwd=work, env=env)
    assert (work / "data" / "tiny" / "shards" / "manifest.json").is_file(), built.stdout[-2000:]
    trained = _run([rrg, "train", "configs/tiny.yaml", "train.max_steps=5", "checkpoint.every_steps=5",
                    "eval.every_steps=0", "cluster.backend=torchrun", "cluster.num_workers=1"], cwd=work, env=env)
    assert "trained to step 5" in trained.stdout + trained.stderr, trained.stdout[-3000:]
    assert (work / "runs" / "tiny" / "checkpoints" / "step_0000005" / "COMPLETE").is_file()  # written where it ran
    assert "/elsewhere/" in (work / "runs" / "tiny" / "config.yaml").read_text()  # shards_dir resolved there too
