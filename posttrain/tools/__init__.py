"""Built-in tools for tool-use environments (TextEnvironment).

A tool is a plain callable ``tool(argument: str) -> str``: the model writes
``<call>calculator(12*(3+4))</call>``, the environment passes the text inside the parentheses as one
string and appends the returned string to the episode. Its ``__name__``, signature and docstring
describe it to the model (see :func:`describe_tool`). Built-ins return ``"Error: ..."`` text for
expected failures instead of raising.

- :func:`calculator` -- safe arithmetic (``ast``, no ``eval``);
- :class:`PythonRunner` / :data:`python` -- a snippet in a resource-limited subprocess (POSIX; read
  :mod:`posttrain.tools.python_runner` for exactly what is and is not isolated);
- :class:`DocumentLookup` -- best-matching document from a fixed collection (not in
  :data:`BUILTIN_TOOLS`: it needs your documents).
"""

from __future__ import annotations

import inspect

from .calculator import calculator
from .lookup import DocumentLookup
from .python_runner import PythonRunner, python

BUILTIN_TOOLS = {"calculator": calculator, "python": python}


def tool_name(fn) -> str:
    """The name the model calls a tool by: ``__name__`` (a class attribute for instances), else the class name."""
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name else type(fn).__name__


def _parameter(fn) -> str:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return "input"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional[0].name if positional else "input"


def _summary(fn) -> str:
    doc = None
    if not (inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn)):
        doc = inspect.getdoc(type(fn).__call__)  # an instance: what calling it does
    doc = doc or inspect.getdoc(fn)
    lines = [line.strip() for line in (doc or "").splitlines() if line.strip()]
    return lines[0] if lines else "no description"


def describe_tool(fn) -> str:
    """One line telling the model about a tool: ``"name(argument) -- first line of its docstring"``.

    ``describe_tool(calculator)`` -> ``"calculator(expression) -- Evaluate an arithmetic expression, ..."``.
    """
    if not callable(fn):
        raise TypeError(f"a tool must be callable as tool(argument: str) -> str, got {type(fn).__name__}")
    return f"{tool_name(fn)}({_parameter(fn)}) -- {_summary(fn)}"


__all__ = ["BUILTIN_TOOLS", "DocumentLookup", "PythonRunner", "calculator", "describe_tool", "python",
           "tool_name"]
