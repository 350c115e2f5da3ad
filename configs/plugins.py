"""Plug-in packages: every subpackage of a shipped package, plus a user's own from a path variable.

Model families (``modeling/families/``, ``RRG_FAMILY_PATH``) and data passes (``shards/passes/``,
``RRG_PASS_PATH``) are found this way.  A package that fails to import is an error naming it, never a
silent skip; so is one shadowed by another module of its name.  It imports nothing from the rest of rrg.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from types import ModuleType


def plugin_packages(shipped: ModuleType, env: str, error: type[Exception]) -> list[tuple[str, str]]:
    """(import name, directory) of each subpackage of ``shipped``, then of each package directly inside a
    directory of ``$env`` (os.pathsep-separated), which imports under its own top-level name."""
    found = [(f"{shipped.__name__}.{m.name}", os.path.join(m.module_finder.path, m.name))
             for m in pkgutil.iter_modules(shipped.__path__) if m.ispkg]
    for root in filter(None, os.environ.get(env, "").split(os.pathsep)):
        if not os.path.isdir(root):
            raise error(f"{env} entry {root} is not a directory")
        found += [(m.name, os.path.join(root, m.name)) for m in pkgutil.iter_modules([root]) if m.ispkg]
    return found


def import_plugins(packages: list[tuple[str, str]], kind: str, error: type[Exception]) -> list[ModuleType]:
    """Import each (name, directory); the directory of a top-level one joins ``sys.path``."""
    modules = []
    for name, directory in packages:
        root = os.path.dirname(directory)
        if "." not in name and root not in sys.path:
            sys.path.append(root)
        try:
            module = importlib.import_module(name)
        except Exception as err:
            raise error(f"{kind} package {name} ({directory}) does not import: {type(err).__name__}: {err}") from err
        origin = getattr(module, "__file__", None) or ""
        if os.path.dirname(os.path.realpath(origin)) != os.path.realpath(directory):
            raise error(f"{kind} package {name} ({directory}) is shadowed by the module of that name "
                        f"at {origin or '?'} (imported first): rename the package")
        modules.append(module)
    return modules
