"""``package.module:attribute`` specs (rewards, environment factories) turned into callables."""

from __future__ import annotations

import importlib
import re

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def import_callable(spec: str, what: str):
    """The callable ``spec`` names (``package.module:function``); errors start with ``what`` and say how to fix."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ValueError(f"{what} {spec!r}: no module named {err.name!r}. Check the spelling and that the "
                             "module is importable (installed, or its folder on PYTHONPATH).") from err
        raise ValueError(f"{what} {spec!r}: importing {module_name!r} failed: {err}") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable.")
    return obj
