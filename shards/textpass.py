"""Driver-side passes over a split's study records (tokenizer training, priors), verified like the workers' reads.

Why: the driver used to open the tars directly, so a truncated or missing shard
crashed tokenizer training with ``tarfile.ReadError`` / ``FileNotFoundError`` and no
shard named.  Here every shard is first checked against the manifest exactly as the
training reader does (``data.verify``: checksum, size or none); a bad shard or record
is counted, logged with its shard (and key), and skipped; past
``data.max_skip_fraction`` of the split the pass stops with a :class:`DataError`
naming the shards.
"""
from __future__ import annotations

import json
import sys
import tarfile
from typing import Any, Iterator

from shards.manifest import Manifest
from shards.reader import DataError, ShardFiles


def iter_verified_records(manifest: Manifest, split: str, verify: str = "checksum",
                          max_skip_fraction: float = 0.01) -> Iterator[dict[str, Any]]:
    """The ``.json`` records of ``split`` in shard order, from shards that pass verification."""
    shards = manifest.split_shards(split)
    planned = max(1, sum(s.num_samples for s in shards))
    files = ShardFiles(str(manifest.root), verify)
    skipped: list[str] = []

    def skip(n: int, where: str) -> None:
        skipped.append(where)
        skip.count += n
        print(f"rrg: skipped {n} record(s): {where}", file=sys.stderr, flush=True)
        if skip.count > max_skip_fraction * planned:
            raise DataError(f"split '{split}': {skip.count} of {planned} records unreadable (more than "
                            f"data.max_skip_fraction={max_skip_fraction}): {'; '.join(skipped[:3])}")
    skip.count = 0

    for shard in shards:
        why = files.check(shard)
        if why is not None:
            skip(shard.num_samples, f"shard {shard.file}: {why}")
            continue
        done = 0
        try:
            with tarfile.open(files.path(shard), "r:") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".json"):
                        try:
                            record = json.loads(tar.extractfile(member).read())
                        except ValueError as err:
                            skip(1, f"shard {shard.file}, {member.name}: bad JSON ({err})")
                            continue
                        done += 1
                        yield record
        except (tarfile.TarError, OSError, EOFError) as err:
            skip(max(1, shard.num_samples - done), f"shard {shard.file}: unreadable tar ({err})")
