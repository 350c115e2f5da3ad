"""Which stage of ``train.stages`` a run is in (one implicit stage without them)."""
from __future__ import annotations

from typing import Any

from trainer.config import TrainConfig


class StageCursor:
    """The run's stages and the index of the current one; a ``run``-scope checkpoint component
    (trainer/stateful.py), so a resume lands inside the stage it left."""

    def __init__(self, train: TrainConfig):
        self.train = train
        self.stages = train.resolved_stages()
        self.index = 0

    @property
    def current(self):
        return self.stages[self.index]

    @property
    def is_last(self) -> bool:
        return self.index == len(self.stages) - 1

    def end(self) -> int:
        """The global step the current stage ends at."""
        return self.train.stage_bounds(self.index)[1]

    def start(self) -> int:
        return self.train.stage_bounds(self.index)[0]

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.index, "stage_name": self.current.name}

    def load_state_dict(self, meta: dict[str, Any]) -> None:
        # a checkpoint without "stage" (before stages existed): the stage its step falls in
        self.index = int(meta.get("stage", self.train.stage_at(max(int(meta["global_step"]) - 1, 0))))
