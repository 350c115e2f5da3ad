"""Object storage (``s3://`` and any other fsspec URL) for shards and checkpoints.

Why here: the shard reader seeks inside tars and DeepSpeed writes checkpoints
with plain file I/O, so remote data is staged through a local cache:

- reading: ``manifest.json`` first, then each shard streamed into the cache
  while its sha256 is computed; a shard whose checksum differs from the
  manifest is never renamed into place.  Transient errors (connection drops,
  throttling, a mismatch from a torn transfer) are retried with exponential
  backoff; a file that keeps failing raises a one-line error naming the URL.
- writing: the same atomic-publish order as on a local disk.  Shards are
  uploaded before ``manifest.json``; a checkpoint's files before its
  ``COMPLETE`` marker, and the ``latest`` pointer last, so a reader that
  follows ``latest`` and checks ``COMPLETE`` never sees a half checkpoint.

Credentials and endpoints come from the usual AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` ...).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

T = TypeVar("T")
CHUNK = 1 << 20
ATTEMPTS = 5
BASE_DELAY_S = 0.2


class StorageError(OSError):
    """A remote file that could not be read or written after every retry (names the URL)."""


class ChecksumMismatch(OSError):
    """Bytes that arrived differ from the manifest's sha256 (retried: a torn transfer looks the same)."""


def is_remote(path: str | os.PathLike | None) -> bool:
    return path is not None and "://" in str(path) and not str(path).startswith("file://")


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def _open(fs, path: str, mode: str):
    """The one place remote files are opened (tests inject transient failures here)."""
    return fs.open(path, mode)


def with_retries(fn: Callable[[], T], what: str, attempts: int = ATTEMPTS, base_delay: float = BASE_DELAY_S) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except (OSError, ConnectionError, TimeoutError) as err:
            if attempt == attempts:
                raise StorageError(f"{what}: failed after {attempts} attempts: {err}") from err
            time.sleep(base_delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def fetch(url: str, dest: Path, sha256: Optional[str] = None) -> Path:
    """Stream ``url`` to ``dest`` (atomically), verifying ``sha256`` when given."""
    fs, path = _fs(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")

    def once() -> Path:
        h = hashlib.sha256()
        with _open(fs, path, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
        if sha256 and h.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{url}: sha256 {h.hexdigest()[:12]} differs from the manifest's {sha256[:12]}")
        os.replace(tmp, dest)
        return dest

    return with_retries(once, f"download {url}")


def read_text(url: str) -> str:
    fs, path = _fs(url)

    def once() -> str:
        with _open(fs, path, "rb") as f:
            return f.read().decode()

    return with_retries(once, f"read {url}")


def upload(local: Path, url: str) -> None:
    fs, path = _fs(url)

    def once() -> None:
        with open(local, "rb") as src, _open(fs, path, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)

    with_retries(once, f"upload {local} -> {url}")


def write_text(url: str, text: str) -> None:
    fs, path = _fs(url)

    def once() -> None:
        with _open(fs, path, "wb") as out:
            out.write(text.encode())

    with_retries(once, f"write {url}")


def exists(url: str) -> bool:
    fs, path = _fs(url)
    return with_retries(lambda: fs.exists(path), f"stat {url}")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def cache_root() -> Path:
    return Path(os.environ.get("RRG_CACHE_DIR") or Path.home() / ".cache" / "rrg")


# ---- shards -----------------------------------------------------------------------------------------------

def sync_shards(url: str, cache: Optional[Path] = None) -> Path:
    """A local, checksum-verified copy of the shard set at ``url``; only missing shards are fetched."""
    local = (cache or cache_root() / "shards") / hashlib.sha1(url.encode()).hexdigest()[:16]
    text = read_text(join(url, "manifest.json"))
    manifest = json.loads(text)
    for shard in manifest["shards"]:
        dest = local / shard["file"]
        if dest.is_file() and dest.stat().st_size == shard["num_bytes"]:
            continue  # verified when it was fetched; the reader re-checks in verify: checksum mode
        fetch(join(url, shard["file"]), dest, shard["sha256"])
    tmp = local / f".manifest.json.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, local / "manifest.json")  # last: a local manifest means every shard is here
    return local


def publish_shards(local: Path, url: str) -> None:
    """Upload a finished local build: every shard first, ``manifest.json`` last."""
    manifest = json.loads((local / "manifest.json").read_text())
    for shard in manifest["shards"]:
        upload(local / shard["file"], join(url, shard["file"]))
    upload(local / "manifest.json", join(url, "manifest.json"))


# ---- checkpoints ------------------------------------------------------------------------------------------

def publish_checkpoint(step_dir: Path, url: str) -> str:
    """Upload one published local checkpoint dir under ``url``: data, then ``COMPLETE``, then ``latest``."""
    remote = join(url, step_dir.name)
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != "COMPLETE")
    for p in files:
        upload(p, join(remote, p.relative_to(step_dir).as_posix()))
    upload(step_dir / "COMPLETE", join(remote, "COMPLETE"))
    write_text(join(url, "latest"), step_dir.name + "\n")
    return remote


def fetch_latest_checkpoint(url: str, local_root: Path) -> Optional[Path]:
    """Download the checkpoint ``url/latest`` names (only if its ``COMPLETE`` exists) into ``local_root``."""
    try:
        name = read_text(join(url, "latest")).strip()
    except FileNotFoundError:
        return None
    remote = join(url, name)
    if not exists(join(remote, "COMPLETE")):
        raise StorageError(f"{remote}: named by 'latest' but has no COMPLETE marker")
    dest = local_root / name
    if (dest / "COMPLETE").is_file():
        return dest
    local_root.mkdir(parents=True, exist_ok=True)
    fs, path = _fs(remote)
    tmp = local_root / f".fetch-{name}"
    for entry in with_retries(lambda: fs.find(path), f"list {remote}"):
        rel = entry[len(path.rstrip("/")) + 1:]
        fetch(join(remote, rel), tmp / rel)
    os.replace(tmp, dest)
    pointer = local_root / "latest"
    if not pointer.is_file() or pointer.read_text().strip() < name:  # never move a local pointer backwards
        pointer.write_text(name + "\n")
    return dest
