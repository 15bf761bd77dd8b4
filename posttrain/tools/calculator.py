"""A safe arithmetic calculator tool: ``calculator("12*(3+4)") -> "84"``.

The expression is parsed with :mod:`ast` and walked node by node -- nothing is ever passed to
``eval``/``exec``. Allowed: int and float literals, the binary operators ``+ - * / // % **``, unary
``+``/``-`` and parentheses. Anything else (names, calls, attributes, strings, comparisons, ...) is
refused with an ``"Error: unsupported ..."`` message naming what was found.

Abuse guards (each returns an ``"Error: ..."`` string, never raises):

- the expression may be at most :data:`MAX_EXPRESSION_CHARS` characters (this also bounds nesting);
- every operand and intermediate result must satisfy ``|x| <= MAX_MAGNITUDE`` (1e100);
- an exponent must satisfy ``|exp| <= MAX_EXPONENT`` (100), and the result of ``**`` is estimated
  from bit lengths *before* computing it, so ``2**10**10`` is refused instantly;
- division or modulo by zero gives ``"Error: division by zero"``.

Formatting: integers print as integers (``"10063"``); a float result that is integral prints as an
integer too (``4/2 -> "2"``, ``1e3 -> "1000"``); other floats print with ``repr`` (shortest
round-tripping form: ``2/4 -> "0.5"``, ``0.1+0.2 -> "0.30000000000000004"``).
"""

from __future__ import annotations

import ast
import math
import operator

MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 1e100
MAX_EXPONENT = 100

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_LOG2_LIMIT = math.log2(MAX_MAGNITUDE)


class _CalcError(Exception):
    """An expected failure; its message is returned to the model after ``"Error: "``."""


def _describe(node: ast.AST) -> str:
    """A short readable name for an unsupported node, e.g. ``"name 'a'"`` or ``"string literal"``."""
    if isinstance(node, ast.Name):
        return f"name {node.id!r}"
    if isinstance(node, ast.Call):
        return "function call"
    if isinstance(node, ast.Attribute):
        return f"attribute access '.{node.attr}'"
    if isinstance(node, ast.Constant):
        return "string literal" if isinstance(node.value, (str, bytes)) else f"literal {node.value!r}"
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        return f"operator {type(node.op).__name__}"
    names = {ast.Compare: "comparison", ast.BoolOp: "boolean operator (and/or)", ast.Subscript: "subscript",
             ast.Lambda: "lambda", ast.NamedExpr: "assignment (:=)"}
    return names.get(type(node), type(node).__name__.lower() + " expression")


def _check(value):
    if abs(value) > MAX_MAGNITUDE:
        raise _CalcError(f"number too large (limit is {MAX_MAGNITUDE:g} in magnitude)")
    return value


def _power(base, exp):
    if abs(exp) > MAX_EXPONENT:
        raise _CalcError(f"exponent {exp!r} too large (limit is {MAX_EXPONENT})")
    if base == 0 and exp < 0:
        raise _CalcError("division by zero")
    if base != 0 and exp > 0 and math.log2(abs(base)) * exp > _LOG2_LIMIT + 1:
        raise _CalcError(f"number too large (limit is {MAX_MAGNITUDE:g} in magnitude)")
    result = base ** exp
    if isinstance(result, complex):
        raise _CalcError("complex result (negative number to a fractional power)")
    return result


def _eval(node: ast.AST):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise _CalcError("number too large")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check(_power(left, right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise _CalcError("division by zero")
        return _check(_BINARY[type(node.op)](left, right))
    raise _CalcError(f"unsupported {_describe(node)}; only numbers, + - * / // % ** and parentheses "
                     "are allowed")


def format_number(value: int | float) -> str:
    """``10063 -> "10063"``, ``2.0 -> "2"``, ``0.5 -> "0.5"`` (integral floats print as integers)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression, e.g. calculator(12*(3+4)) returns 84.

    Supports numbers, + - * / // % ** and parentheses. Returns the result as text, or a message
    starting with "Error:" when the expression is not plain arithmetic or cannot be computed.
    """
    if not isinstance(expression, str):
        return f"Error: expected the expression as a string, got {type(expression).__name__}"
    text = expression.strip()
    if not text:
        return "Error: empty expression; write arithmetic such as 12*(3+4)"
    if len(text) > MAX_EXPRESSION_CHARS:
        return (f"Error: expression too long ({len(text)} characters; the limit is "
                f"{MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as err:
        reason = getattr(err, "msg", None) or str(err)
        return f"Error: invalid expression ({reason})"
    try:
        return format_number(_eval(tree))
    except _CalcError as err:
        return f"Error: {err}"
    except ZeroDivisionError:
        return "Error: division by zero"
    except (OverflowError, RecursionError, MemoryError):
        return "Error: expression too large to compute"
