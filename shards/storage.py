"""Object storage (``s3://`` and any other fsspec URL) for shards and checkpoints.

Why here: the shard reader seeks inside tars and DeepSpeed writes checkpoints
with plain file I/O, so remote data goes through local files:

- reading shards (``data.shards_dir: s3://...``): ``manifest.json`` first; then
  either (``data.cache: true``, the default) every shard is streamed into a local
  cache (``$RRG_CACHE_DIR/shards/<hash of the URL>``) while its sha256 is computed,
  and a later run fetches only what is missing or changed; or (``data.cache: false``)
  nothing is copied up front and each loader process streams the shard it is about
  to read into a small spool of its own (:class:`ShardSpool`: a few shards, deleted
  as the reader moves on and when the process ends).  Either way a shard whose bytes
  differ from the manifest's sha256 never reaches the reader as good data.  Sidecars
  and dataset assets beside the shards are mirrored (verified by their own hashes).
- transient errors (connection drops, throttling, a mismatch from a torn transfer) are
  retried with exponential backoff, each retry one line on stderr; a file that keeps
  failing raises a one-line :class:`StorageError` naming the URL.  s3fs and botocore
  retry connection-level errors underneath as well; the checksum is what catches a
  transfer that "succeeded" with the wrong bytes.
- writing: the same atomic-publish order as on a local disk.  Shards are uploaded
  before ``manifest.json``; a checkpoint's files before its ``COMPLETE`` marker, and
  the ``latest`` pointer last, so a reader that follows ``latest`` and checks
  ``COMPLETE`` never sees a half checkpoint.  The run's tokenizer goes to
  ``<checkpoint.dir>/tokenizer/`` (before the first ``latest``), so a fresh machine
  resumes with the same vocabulary; checkpoints beyond ``keep_last`` are removed
  remotely too.  Checkpoint files are fetched back verified against the sha256 list
  in their ``COMPLETE``.

Credentials and endpoints come from the usual AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` ...), which
trainer/prepare.py forwards to every worker.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, TypeVar

from configs.digest import PREFIX, hasher_for

T = TypeVar("T")
CHUNK = 1 << 20
ATTEMPTS = 5
BASE_DELAY_S = 0.2
STREAM_MARKER = "remote.json"  # in a streamed shard set's local mirror: where its shards are read from
TOKENIZER_SUMS = "SHA256SUMS.json"  # <checkpoint.dir>/tokenizer/: written after the tokenizer's files


class StorageError(OSError):
    """A remote file that could not be read or written after every retry (names the URL)."""

    def __init__(self, message: str, last: Optional[BaseException] = None):
        super().__init__(message)
        self.last = last  # the final attempt's error (a ChecksumMismatch: the object itself is wrong)


class ChecksumMismatch(OSError):
    """Bytes that arrived differ from the manifest's sha256 (retried: a torn transfer looks the same)."""


def is_remote(path: str | os.PathLike | None) -> bool:
    return path is not None and "://" in str(path) and not str(path).startswith("file://")


def _fs(url: str):
    import fsspec

    # no listing cache: another process (a worker, the next job) may have written since the last look
    kwargs: dict = {"use_listings_cache": False}
    if url.split("://", 1)[0] in ("s3", "s3a"):
        # fsspec reuses a filesystem made with the same arguments, and an s3 one keeps the endpoint it
        # first connected to: name the endpoint, so a changed AWS_ENDPOINT_URL gets its own client
        kwargs["endpoint_url"] = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return fsspec.core.url_to_fs(url, **kwargs)


def _open(fs, path: str, mode: str):
    """The one place remote files are opened (unit tests inject transient failures here)."""
    return fs.open(path, mode)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a retry can cure: OS / socket errors, and what s3fs lets through from botocore and aiohttp
    once its own retries are spent (dropped connections, short reads, a body failing the store's own
    checksum: ``FlexibleChecksumError``)."""
    found: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        from botocore import exceptions as bx

        found += [bx.HTTPClientError, bx.ConnectionError, bx.FlexibleChecksumError, bx.IncompleteReadError,
                  bx.ResponseStreamingError]
    except ImportError:
        pass
    try:
        import aiohttp

        found.append(aiohttp.ClientError)
    except ImportError:
        pass
    return tuple(found)


def with_retries(fn: Callable[[], T], what: str, attempts: int = ATTEMPTS, base_delay: Optional[float] = None) -> T:
    """``fn()``, retried on transient errors with exponential backoff; missing files and refusals are not."""
    delay0 = BASE_DELAY_S if base_delay is None else base_delay
    transient = _transient_errors()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            raise
        except transient as err:
            if attempt == attempts:
                raise StorageError(f"{what}: failed after {attempts} attempts: {err}", err) from err
            delay = delay0 * 2 ** (attempt - 1)
            print(f"rrg: {what}: attempt {attempt}/{attempts} failed ({type(err).__name__}: {err}); "
                  f"retrying in {delay:.1f}s", file=sys.stderr, flush=True)
            time.sleep(delay)
    raise AssertionError("unreachable")


def fetch(url: str, dest: Path, sha256: Optional[str] = None) -> Path:
    """Stream ``url`` to ``dest`` (atomically), verifying ``sha256`` when given."""
    fs, path = _fs(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")

    def once() -> Path:
        h = hasher_for(sha256)  # plain sha256, or the piece digest checkpoints record
        try:
            with _open(fs, path, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            if sha256 and h.hexdigest() != sha256:
                got = h.hexdigest().removeprefix(PREFIX)
                raise ChecksumMismatch(f"{url}: sha256 {got[:12]} differs from the expected "
                                       f"{sha256.removeprefix(PREFIX)[:12]}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
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


def listdir(url: str) -> list[str]:
    """Names directly below ``url`` (files and "directories"); empty when there is nothing."""
    fs, path = _fs(url)
    try:
        entries = with_retries(lambda: fs.ls(path, detail=False), f"list {url}")
    except FileNotFoundError:
        return []
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != path.rstrip("/")})


def remove(url: str) -> None:
    """Delete ``url`` and everything below it (nothing there is not an error)."""
    fs, path = _fs(url)
    try:
        with_retries(lambda: fs.rm(path, recursive=True), f"delete {url}")
    except FileNotFoundError:
        pass


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def cache_root() -> Path:
    return Path(os.environ.get("RRG_CACHE_DIR") or Path.home() / ".cache" / "rrg")


def url_key(url: str) -> str:
    return hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]


# ---- shards -----------------------------------------------------------------------------------------------

def _fetch_verified(url: str, dest: Path, sha256: str) -> None:
    """``dest`` holds the bytes whose sha256 is ``sha256``: kept if a marker says it was verified so, else fetched.

    The marker (``.<name>.sha256``) is removed before the file is replaced and written after, so a
    crash in between leaves a file without marker (fetched again next time), never a wrong marker.
    """
    marker = dest.with_name(f".{dest.name}.sha256")
    if dest.is_file() and marker.is_file() and marker.read_text().strip() == sha256:
        return
    marker.unlink(missing_ok=True)
    fetch(url, dest, sha256)
    marker.write_text(sha256)


def _sync_extras(url: str, local: Path) -> None:
    """Mirror the sidecars and dataset assets published beside the shards (their files verified, json last)."""
    from shards.sidecars import ASSET_JSON, ASSETS_DIR, SIDECAR_JSON, SIDECARS_DIR

    for kind, meta_name, listed in ((SIDECARS_DIR, SIDECAR_JSON, "shards"), (ASSETS_DIR, ASSET_JSON, "files")):
        for name in listdir(join(url, kind)):
            if name.startswith("."):
                continue
            remote = join(url, kind, name)
            try:
                text = read_text(join(remote, meta_name))
            except FileNotFoundError:
                continue  # not published (yet): the readers ignore it locally too
            meta = json.loads(text)
            target = local / kind / name
            for file, info in sorted(meta.get(listed, {}).items()):
                _fetch_verified(join(remote, file), target / file, info["sha256"] if isinstance(info, dict) else info)
            tmp = target / f".{meta_name}.{os.getpid()}.tmp"
            tmp.write_text(text)
            os.replace(tmp, target / meta_name)


def sync_shards(url: str, cache: Optional[Path] = None, shards: bool = True) -> Path:
    """A local mirror of the shard set at ``url``, for :func:`shards.manifest.load_manifest`.

    ``shards=True``: a checksum-verified copy of every shard (only missing or changed ones are fetched).
    ``shards=False``: the manifest, sidecars and assets only, plus a marker naming ``url``; the
    reader then streams each shard when it needs it (:class:`ShardSpool`).
    """
    local = (cache or cache_root() / ("shards" if shards else "stream")) / url_key(url)
    text = read_text(join(url, "manifest.json"))
    manifest = json.loads(text)
    local.mkdir(parents=True, exist_ok=True)
    if shards:
        for shard in manifest["shards"]:
            _fetch_verified(join(url, shard["file"]), local / shard["file"], shard["sha256"])
    else:
        (local / STREAM_MARKER).write_text(json.dumps({"url": url.rstrip("/")}))
    _sync_extras(url, local)
    tmp = local / f".manifest.json.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, local / "manifest.json")  # last: a local manifest means its shards are here (or streamed)
    return local


def stream_source(root: str | os.PathLike) -> Optional[str]:
    """The URL a streamed shard set's mirror reads its shards from (None for a local or cached set)."""
    marker = Path(root) / STREAM_MARKER
    return json.loads(marker.read_text())["url"] if marker.is_file() else None


class ShardSpool:
    """One process's short-lived local copies of streamed shards: at most ``keep``, least recently used
    removed first (an open file stays readable after its removal), all removed with the spool."""

    def __init__(self, url: str, keep: int = 3):
        self.url, self.keep = url, max(1, keep)
        base = cache_root() / "spool"
        base.mkdir(parents=True, exist_ok=True)
        _clean_dead_spools(base)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{socket.gethostname()}-{os.getpid()}-", dir=base))
        self._files: OrderedDict[str, Path] = OrderedDict()
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.dir), True)

    def get(self, file: str, sha256: Optional[str]) -> Path:
        """The local copy of shard ``file`` (fetched now unless resident), verified when ``sha256`` is given."""
        if file in self._files and self._files[file].is_file():
            self._files.move_to_end(file)
            return self._files[file]
        path = fetch(join(self.url, file), self.dir / file, sha256)
        self._files[file] = path
        while len(self._files) > self.keep:
            _, old = self._files.popitem(last=False)
            old.unlink(missing_ok=True)
        return path

    def close(self) -> None:
        self._finalizer()


def _clean_dead_spools(base: Path) -> None:
    """Spools of processes of this host that ended without cleaning up (a killed loader worker)."""
    host = socket.gethostname()
    for d in base.iterdir():
        parts = d.name.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def publish_shards(local: Path, url: str) -> None:
    """Upload a finished local build: every shard first, ``manifest.json`` last; sidecars and assets too
    (their files before their json).  An identical manifest already there means nothing to do."""
    from shards.sidecars import ASSET_JSON, ASSETS_DIR, SIDECAR_JSON, SIDECARS_DIR

    text = (local / "manifest.json").read_text()
    try:
        if read_text(join(url, "manifest.json")) == text and not any((local / d).is_dir() for d in
                                                                     (SIDECARS_DIR, ASSETS_DIR)):
            return
    except FileNotFoundError:
        pass
    manifest = json.loads(text)
    for shard in manifest["shards"]:
        upload(local / shard["file"], join(url, shard["file"]))
    upload(local / "manifest.json", join(url, "manifest.json"))
    for kind, meta_name in ((SIDECARS_DIR, SIDECAR_JSON), (ASSETS_DIR, ASSET_JSON)):
        base = local / kind
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            if d.name.startswith(".") or not (d / meta_name).is_file():
                continue
            for p in sorted(p for p in d.rglob("*") if p.is_file() and p.name != meta_name):
                upload(p, join(url, kind, d.name, p.relative_to(d).as_posix()))
            upload(d / meta_name, join(url, kind, d.name, meta_name))


# ---- checkpoints ------------------------------------------------------------------------------------------

def _tokenizer_sums(tokenizer_dir: Path) -> dict[str, str]:
    from shards.manifest import file_sha256

    return {p.relative_to(tokenizer_dir).as_posix(): file_sha256(p)
            for p in sorted(tokenizer_dir.rglob("*")) if p.is_file()}


def publish_tokenizer(tokenizer_dir: Path, url: str) -> None:
    """``<url>/tokenizer/``: the run's tokenizer files, then their sha256 list (skipped if already there)."""
    remote = join(url, "tokenizer")
    sums = _tokenizer_sums(tokenizer_dir)
    text = json.dumps(sums, indent=0, sort_keys=True)
    try:
        if read_text(join(remote, TOKENIZER_SUMS)) == text:
            return
    except FileNotFoundError:
        pass
    for rel in sums:
        upload(tokenizer_dir / rel, join(remote, rel))
    write_text(join(remote, TOKENIZER_SUMS), text)


def fetch_tokenizer(url: str, dest: Path) -> bool:
    """Fetch ``<url>/tokenizer/`` (verified) into ``dest``; False if none was published."""
    remote = join(url, "tokenizer")
    try:
        sums = json.loads(read_text(join(remote, TOKENIZER_SUMS)))
    except FileNotFoundError:
        return False
    tmp = dest.with_name(f".{dest.name}.fetch-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, digest in sums.items():
        fetch(join(remote, rel), tmp / rel, digest)
    tmp.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return True


def checkpoint_steps(url: str) -> list[str]:
    """Names of the ``step_*`` checkpoints under ``url``, oldest first (complete or not)."""
    names = [n for n in listdir(url) if n.startswith("step_") and n[5:].isdigit()]
    return sorted(names, key=lambda n: int(n[5:]))


def publish_checkpoint(step_dir: Path, url: str, tokenizer_dir: Optional[Path] = None,
                       keep_last: Optional[int] = None) -> str:
    """Upload one published local checkpoint dir under ``url``: data, then ``COMPLETE``, then ``latest``.

    ``tokenizer_dir``: also ``<url>/tokenizer/`` (before ``latest`` names the checkpoint);
    ``keep_last``: afterwards, older remote checkpoints beyond that many are deleted.
    """
    if tokenizer_dir is not None:
        publish_tokenizer(Path(tokenizer_dir), url)
    remote = join(url, step_dir.name)
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != "COMPLETE")
    for p in files:
        upload(p, join(remote, p.relative_to(step_dir).as_posix()))
    upload(step_dir / "COMPLETE", join(remote, "COMPLETE"))
    write_text(join(url, "latest"), step_dir.name + "\n")
    if keep_last:
        for old in checkpoint_steps(url)[:-keep_last]:
            if old != step_dir.name:
                remove(join(url, old))
    return remote


def fetch_checkpoint(remote: str, dest: Path) -> Path:
    """Download the complete checkpoint at ``remote`` into ``dest`` (atomically: ``dest`` appears whole).

    Every file listed in its ``COMPLETE`` is fetched verified against the sha256 recorded there
    (a checkpoint without that list, written with ``--trust-checkpoint``, is copied as it is).
    """
    if (dest / "COMPLETE").is_file():
        return dest
    try:
        complete = read_text(join(remote, "COMPLETE"))
    except FileNotFoundError:
        raise StorageError(f"{remote}: not a complete rrg checkpoint (no COMPLETE marker)") from None
    try:
        listed = json.loads(complete).get("sha256")
    except ValueError:
        listed = None
    tmp = dest.with_name(f".fetch-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(listed, dict):
        for rel, digest in sorted(listed.items()):
            fetch(join(remote, rel), tmp / rel, digest)
    else:
        fs, path = _fs(remote)
        for entry in with_retries(lambda: fs.find(path), f"list {remote}"):
            rel = entry[len(path.rstrip("/")) + 1:]
            if rel != "COMPLETE":
                fetch(join(remote, rel), tmp / rel)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "COMPLETE").write_text(complete)  # last, as when it was saved
    if dest.exists():  # a leftover without COMPLETE
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def fetch_latest_checkpoint(url: str, local_root: Path) -> Optional[Path]:
    """Download the checkpoint ``url/latest`` names (only if its ``COMPLETE`` exists) into ``local_root``."""
    try:
        name = read_text(join(url, "latest")).strip()
    except FileNotFoundError:
        return None
    remote = join(url, name)
    if not exists(join(remote, "COMPLETE")):
        raise StorageError(f"{remote}: named by 'latest' but has no COMPLETE marker")
    pointer = local_root / "latest"
    if pointer.is_file():  # this staging dir holds the same or a newer checkpoint already (not yet uploaded)
        mine = pointer.read_text().strip()
        if mine >= name and (local_root / mine / "COMPLETE").is_file():
            return local_root / mine
    local_root.mkdir(parents=True, exist_ok=True)
    dest = fetch_checkpoint(remote, local_root / name)
    if not pointer.is_file() or pointer.read_text().strip() < name:  # never move a local pointer backwards
        tmp = local_root / f".latest.{os.getpid()}.tmp"
        tmp.write_text(name + "\n")
        os.replace(tmp, pointer)
    return dest


def move_aside(url: str) -> str:
    """``--overwrite`` for a remote checkpoint dir: its checkpoints, pointer and tokenizer go to
    ``<url>/previous-<time>/`` (server-side copies); returns where."""
    aside = join(url, f"previous-{time.strftime('%Y%m%d-%H%M%S')}")
    fs, _ = _fs(url)
    for name in listdir(url):
        if name.startswith("step_") or name in ("latest", "tokenizer"):
            src = _fs(join(url, name))[1]
            dst = _fs(join(aside, name))[1]
            with_retries(lambda: fs.copy(src, dst, recursive=True), f"copy {join(url, name)}")
            remove(join(url, name))
    return aside


def clear_checkpoints(url: str) -> None:
    """``--overwrite delete`` for a remote checkpoint dir."""
    for name in listdir(url):
        if name.startswith("step_") or name in ("latest", "tokenizer"):
            remove(join(url, name))
