"""Test environment: everything on CPU, offline, and inside the work tree."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("WANDB_DIR", str(ROOT / ".cache" / "wandb"))


import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> str:
    """configs/tiny.yaml's demo studies built once per session with the real writer (Ray tasks)."""
    out = tmp_path_factory.mktemp("tiny_shards")
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "shards", "build", str(ROOT / "configs" / "tiny.yaml"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return str(out)


# `make test` runs the suite on two xdist workers (`-n 2 --dist loadfile --no-loadscope-reorder`),
# scheduled by `ModuleGroups`: each test module runs whole on one worker, so its module fixtures (a
# trained run, a baseline) are built once; the modules that start their own Ray head nodes on
# 127.0.0.2/3 or a SLURM cluster form one group and run one after the other; and the groups are handed
# out in collection order, which puts that group first and then the modules with slow tests, so that
# the two workers finish at about the same time. (A scheduler of our own: xdist's loadgroup renames
# node ids, which pytest 9 no longer allows.)
CLUSTER_MODULES = ("test_multinode.py", "test_harden_e2e.py", "test_slurm.py")


def _group(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "cluster-heads" if path.rsplit("/", 1)[-1] in CLUSTER_MODULES else path


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config, items):
    slow = {_group(item.nodeid) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (_group(item.nodeid) != "cluster-heads", _group(item.nodeid) not in slow))  # stable
