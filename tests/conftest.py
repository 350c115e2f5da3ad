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
