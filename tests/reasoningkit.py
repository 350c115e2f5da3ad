"""Helpers for the LVMed-R2 tests: a writable shard copy and in-place report edits (manifest re-published)."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from shards.manifest import file_sha256, load_manifest


def shard_copy(shards: str, dest: Path) -> str:
    out = Path(dest) / "shards"
    shutil.copytree(shards, out, ignore=shutil.ignore_patterns("sidecars", "assets"))
    return str(out)


def edit_reports(shards_dir: str, split: str, suffix: str) -> list[str]:
    """Add ``suffix`` to the findings of every report of ``split`` (tars and manifest rewritten); returns the keys."""
    manifest = load_manifest(shards_dir)
    keys = []
    for info in manifest.shards:
        if info.split != split:
            continue
        path = manifest.path_of(info)
        with tarfile.open(path, "r:") as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf if m.isfile()]
        with tarfile.open(path, "w") as tf:
            for m, data in members:
                if m.name.endswith(".json"):
                    rec = json.loads(data)
                    text = rec["report"]["text"]
                    cut = text.find("\nIMPRESSION:")
                    rec["report"]["text"] = text + suffix if cut < 0 else text[:cut] + suffix + text[cut:]
                    keys.append(m.name.split(".")[0])
                    data = json.dumps(rec).encode()
                m.size = len(data)
                tf.addfile(m, io.BytesIO(data))
        info.sha256, info.num_bytes = file_sha256(path), path.stat().st_size
    manifest.write()
    return keys
