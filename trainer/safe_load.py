"""Checkpoints are data, not code: hash-verified, and torch files unpickled with ``weights_only=True``.

Why: DeepSpeed loads its ``*model_states.pt`` / ``*optim_states.pt`` with pickle fully
enabled, so a checkpoint copied from a colleague or a hub could run any command.  rrg
therefore

- records the digest of every file of a checkpoint in its ``COMPLETE`` marker
  (:func:`write_complete`) and checks them before loading (:func:`verify_checkpoint`): sha256
  over 64 MiB pieces, hashed on every core (configs/digest.py; plain sha256 from older rrg is
  still checked);
- loads every torch file, DeepSpeed's included, through ``torch.load(weights_only=True)``
  with an explicit allow-list of the few DeepSpeed classes its states hold
  (:func:`safe_torch_load`).  Anything else in a file is refused with one line.

``--trust-checkpoint`` (``trusted=True``) skips both checks: the checkpoint is then
loaded with full pickle, which can run arbitrary code from it.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path
from typing import Iterator

from configs.digest import PREFIX, file_digests, matches

COMPLETE = "COMPLETE"
FORMAT = "rrg-checkpoint/1"
TRUST_HINT = ("pass --trust-checkpoint only if you trust where it came from "
              "(it is then unpickled fully, which can run code)")


class CheckpointTrustError(ValueError):
    """A checkpoint that rrg will not load without ``--trust-checkpoint``."""


def _files(root: Path) -> dict[str, Path]:
    """Every regular file below ``root`` but the marker and on-demand conversions."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != COMPLETE and not rel.startswith(("universal/", ".tmp-")):
            out[rel] = p
    return out


def write_complete(root: Path, name: str, write) -> None:
    """Write ``root/COMPLETE``: the format tag, the checkpoint name and every file's digest.

    Every file is fsynced first, so a marker never lists data that is still only in the page cache.
    """
    files = _files(root)
    digests = file_digests(files.values(), sync=True)
    files = {rel: digests[p] for rel, p in files.items()}
    write(root / COMPLETE, json.dumps({"format": FORMAT, "name": name, "sha256": files}, indent=0))


def verify_checkpoint(root: str | os.PathLike) -> None:
    """Raise :class:`CheckpointTrustError` unless every file matches the hashes rrg recorded."""
    root = Path(root)
    try:
        marker = json.loads((root / COMPLETE).read_text())
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT or not isinstance(marker.get("sha256"), dict):
        raise CheckpointTrustError(f"{root} was not written by rrg (no file hashes in {COMPLETE}); {TRUST_HINT}")
    recorded: dict[str, str] = marker["sha256"]
    present = _files(root)
    for rel in sorted(set(present) - set(recorded)):
        raise CheckpointTrustError(f"{root}: file {rel} is not in the checkpoint's hash list; {TRUST_HINT}")
    for rel in sorted(set(recorded) - set(present)):
        raise CheckpointTrustError(f"{root}: file {rel} listed in {COMPLETE} is missing")
    pieces = file_digests(present[rel] for rel, d in recorded.items() if str(d).startswith(PREFIX))
    for rel, digest in sorted(recorded.items()):
        ok = pieces[present[rel]] == digest if present[rel] in pieces else matches(present[rel], str(digest))
        if not ok:
            raise CheckpointTrustError(f"{root}: file {rel} does not match its recorded sha256; {TRUST_HINT}")


def allowed_globals() -> list:
    """The non-tensor classes DeepSpeed's model / optimizer states contain (ZeRO 0-3, fp32/bf16)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def safe_torch_load(trusted: bool = False) -> Iterator[None]:
    """Inside: every ``torch.load`` (DeepSpeed's too) runs with ``weights_only=True`` + the allow-list.

    A file needing anything else raises :class:`CheckpointTrustError` naming the file and the class.
    """
    if trusted:
        yield
        return
    import torch

    original = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()
            detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
            raise CheckpointTrustError(f"refusing to unpickle {f}: it holds objects outside rrg's allow-list "
                                       f"({detail.strip()[:200]}); {TRUST_HINT}") from None

    torch.load = load
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            yield
    finally:
        torch.load = original


def check_unpickles(root: str | os.PathLike) -> None:
    """Every torch file of the checkpoint at ``root`` unpickles under :func:`safe_torch_load`.

    The driver runs this before a resume starts any worker, so a crafted checkpoint is refused in
    seconds, naming its file.  Only the pickled structure is read: the tensors are memory-mapped, not
    loaded (a file in torch's pre-zip format, which cannot be mapped, is read whole)."""
    import torch

    root = Path(root)
    with safe_torch_load():
        for rel, path in _files(root).items():
            if not rel.endswith((".pt", ".pth")):
                continue
            try:
                torch.load(path, map_location="cpu", mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                torch.load(path, map_location="cpu")


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.safe_load MODULE ARGS...``: run a DeepSpeed tool's main under the safe loader."""
    import runpy
    import sys

    args = sys.argv[1:] if argv is None else argv
    sys.argv = [args[0], *args[1:]]
    with safe_torch_load():
        runpy.run_module(args[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
