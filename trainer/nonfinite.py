"""Stop a diverged run before it overwrites good checkpoints with NaNs.

The loop hands the guard the loss / grad-norm values it already synchronised for
logging (and, before a checkpoint, the pending step losses).  A checkpoint is
never written from a non-finite state, so ``keep_last`` never rotates the good
ones away; after ``train.max_nonfinite_steps`` consecutive non-finite checks the
run stops with :class:`NonFiniteError` (one line, its own exit code).  Checks happen at
log steps and checkpoint steps (the values are synchronised there anyway), so the limit
counts checks: with ``logging.every_steps: 10`` a limit of 3 stops within ~30 steps.
"""
from __future__ import annotations

import math
from typing import Iterable


class NonFiniteError(RuntimeError):
    """Loss or gradient norm stayed NaN/inf: the run is stopped, good checkpoints are kept."""


class NonFiniteGuard:
    def __init__(self, limit: int):
        self.limit = limit
        self.bad = 0  # consecutive non-finite checks
        self.first_bad_step: int | None = None

    def observe(self, step: int, values: Iterable[float | None]) -> bool:
        """True when every value is finite; raises once ``limit`` consecutive checks were not."""
        if all(v is None or math.isfinite(v) for v in values):
            self.bad, self.first_bad_step = 0, None
            return True
        self.bad += 1
        self.first_bad_step = self.first_bad_step or step
        if self.bad >= self.limit:
            raise NonFiniteError(f"loss or gradient norm is not finite since step {self.first_bad_step} "
                                 f"({self.bad} checks in a row, train.max_nonfinite_steps={self.limit}): "
                                 f"stopped without saving that state; lower train.lr or check the data")
        return False
