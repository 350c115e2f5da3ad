"""Offline data passes: jobs that derive something from the shards once, before training, and store it
beside them (a sidecar or a dataset asset).

Each pass is one package here (``shards/passes/<name>/``), or in a directory of ``RRG_PASS_PATH``, whose
``__init__`` registers one :class:`DataPass`.  The pass owns everything about it:

* ``config``: its typed section, ``data.passes.<name>`` (``shards.config.DataConfig``);
* ``errors``: its error classes and the exit code each gets (trainer/runguard.py reads them);
* ``commands``: its CLI subcommands (launcher/cli.py adds them under their group);
* ``generate``: for a pass whose output a model reads at inference, the per-study function that
  ``rrg generate`` runs on a new study (trainer/evaluation/infer_files.py, ``family.derived_inputs()``);
* ``inspect``: what ``rrg shards inspect`` shows of a study's pass output.

Heavy parts are named as ``"module:attribute"`` strings and imported only when used, so that loading a
config (which builds the ``data.passes`` section from this registry) stays light.  A pass that needs a
local language model uses :mod:`shards.passes.local_lm`.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from configs.schema import Registry

PASS_PATH_ENV = "RRG_PASS_PATH"  # os.pathsep-separated directories of a user's own pass packages
# CLI groups that several passes share (the CLI itself owns "shards" and "bench"); a pass may add its own
ANNOTATE = "annotate"
SHARED_GROUPS = {ANNOTATE: "annotation overlays and dataset assets beside the shards"}


class PassImportError(ImportError):
    """A pass package that does not import (names the package, its directory and the underlying error)."""


class PassInputError(RuntimeError):
    """A pass cannot run on what it was given (a missing model directory, a model rrg cannot read)."""


def resolve(spec: str) -> Any:
    """``"module:attribute"`` -> the attribute."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Command:
    """One CLI subcommand: ``rrg <group> <name> CONFIG [key=value ...]`` (group "" for a top-level one).

    ``run`` (``"module:function"``) is called as ``run(args, ctx)``, ``ctx`` a :class:`CommandContext`.
    ``arguments`` adds the command's own options to its parser.
    """

    group: str
    name: str
    help: str
    run: str
    arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None


@dataclass(frozen=True)
class CommandContext:
    """What the CLI hands a pass command: the config loader and the task pool (the cluster floor's)."""

    load: Callable[[argparse.Namespace], Any]  # args -> the validated RunConfig
    pool: Callable[..., Any]  # (cfg, address=None) -> a pool with map_unordered (Ray tasks, or serial)


@dataclass(frozen=True)
class DataPass:
    name: str
    summary: str
    config: type  # a dataclass with validate(key): the data.passes.<name> section
    errors: tuple[tuple[str, int], ...] = ()  # ("module:Class", exit code)
    commands: tuple[Command, ...] = ()
    groups: dict[str, str] = field(default_factory=dict)  # CLI groups this pass introduces: name -> help
    generate: Optional[str] = None  # "module:function": (run cfg, model dir) -> (make_members, context)
    inspect: Optional[str] = None  # "module:function": (manifest, shard file, key) -> (text, image) or None


PASSES: Registry[DataPass] = Registry("data pass")
_imported = False


def register(spec: DataPass) -> DataPass:
    PASSES.register(spec.name)(spec)
    return spec


def pass_packages() -> list[tuple[str, str]]:
    """(import name, directory) of every pass package: each subpackage here, then each package directly
    inside a directory of ``RRG_PASS_PATH``."""
    import shards.passes as shipped
    from configs.plugins import plugin_packages

    return plugin_packages(shipped, PASS_PATH_ENV, PassImportError)


def all_passes() -> list[DataPass]:
    """Every registered pass, by name (the packages are imported once per process)."""
    global _imported
    if not _imported:
        from configs.plugins import import_plugins

        import_plugins(pass_packages(), "pass", PassImportError)
        _imported = True
    return [PASSES.get(n) for n in PASSES.names()]


def get_pass(name: str, key: str = "") -> DataPass:
    all_passes()
    return PASSES.get(name, key)
