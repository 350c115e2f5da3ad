"""Task pools: how data passes (shard writing, annotation, mask and KG passes) and evaluation fan out.

Jobs on the lower floors take a pool instead of importing a cluster backend, so the floors
stay clean: ``cluster/`` provides a Ray pool (embedded local Ray or a cluster address), and
:class:`SerialPool` runs everything in this process (tests, tiny inputs, debugging).

``pool.map_unordered(fn, items, shared=(...))`` calls ``fn(*shared, *item)`` for every item
tuple and yields ``(index, result)`` as results arrive.  ``shared`` objects are shipped once.
An exception raised by ``fn`` reaches the caller as itself (a Ray pool unwraps its task
errors), so rrg's own errors keep their one-line messages and exit codes.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Protocol


class TaskPool(Protocol):
    def map_unordered(self, fn: Callable[..., Any], items: Iterable[tuple], *, shared: tuple = (),
                      num_cpus: float = 1, num_gpus: float = 0, limit: int = 0,
                      env: dict[str, str] | None = None) -> Iterator[tuple[int, Any]]:
        ...

    @property
    def parallelism(self) -> int:
        ...


class SerialPool:
    """Runs every task in the calling process, in order."""

    parallelism = 1

    def map_unordered(self, fn, items, *, shared=(), num_cpus=1, num_gpus=0, limit=0, env=None):
        for i, item in enumerate(items):
            yield i, fn(*shared, *item)
