"""What a checkpoint restores, as objects: each holds one piece of a run's state.

A component has ``state_dict()`` / ``load_state_dict(state)`` and is registered by name with
:class:`trainer.checkpoint.CheckpointManager`, which saves and restores every registered one alike.
Its scope says where the state lives (the layout of trainer/checkpoint.py, unchanged since before
the components existed, so older checkpoints resume):

* ``rank``: ``client/rank_N.json`` under the component's name, its top-level tensors in
  ``client/rank_N.rng.safetensors``.  On a world-size change rank 0's state is loaded on every rank,
  or ``load_resized(state, step)`` is called where the component has it.
* ``run``: the same on every rank, written by rank 0 into ``meta.json``'s top level (its keys are meta
  keys); ``load_state_dict`` gets the whole of ``meta.json``, in which an older checkpoint may lack a key.
"""
from __future__ import annotations

import random
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RNGStreams:
    """python, numpy, torch (and CUDA) generators of this rank; no pickles (JSON + tensors)."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank

    def state_dict(self) -> dict[str, Any]:
        py = random.getstate()
        np_state = np.random.get_state()
        out: dict[str, Any] = {
            "python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            out["cuda"] = torch.cuda.get_rng_state()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        v, py, gauss = state["python"]
        random.setstate((v, tuple(py), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])

    def load_resized(self, state: dict[str, Any], step: int) -> None:
        """Another world size: streams cannot be re-sharded, so each rank's is seeded anew."""
        seed_all(self.seed * 1000 + step * 7 + self.rank)


class WandbRun:
    """The W&B run id a resumed run logs into (the checkpoint's, else the one the driver made)."""

    def __init__(self, run_id: str):
        self.id = run_id

    def state_dict(self) -> dict[str, Any]:
        return {"wandb_id": self.id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.id = state.get("wandb_id") or self.id
