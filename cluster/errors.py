"""Find rrg's own error inside Ray's wrappers, so the CLI prints its one line and exit code.

A ``DataError`` raised in a Ray Train worker reaches the driver as a
``ray.train.WorkerGroupError`` (``worker_failures`` per rank, each maybe a
``RayTaskError`` whose ``cause`` is the original); a Ray task's as a
``RayTaskError``.  :func:`unwrap` walks those layers and returns the first
exception whose type is one of ``known``, or ``None``.
"""
from __future__ import annotations

from typing import Optional


class ClusterStartError(RuntimeError):
    """The training workers did not get their resources in time (exit code 7)."""


def _children(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    failures = getattr(err, "worker_failures", None)
    if isinstance(failures, dict):
        out += [failures[k] for k in sorted(failures)]
    # Ray Train V2 wraps a worker's exception as UserExceptionWithTraceback(_base_exc)
    for attr in ("controller_failure", "cause", "_base_exc", "__cause__", "__context__"):
        child = getattr(err, attr, None)
        if isinstance(child, BaseException):
            out.append(child)
    return out


def unwrap(err: BaseException, known: tuple[type, ...]) -> Optional[BaseException]:
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, known):
            return e
        todo += _children(e)
    return None
