"""The tools shipped agents may use: small, safe, and each one a plain async function of a string."""

from __future__ import annotations

import ast
import math
import operator
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_EXPRESSION_CHARS = 200
# Every intermediate of the calculator stays within a float's range (|x| < 2**1024, about
# 1.8e308, 309 digits), so each step is a few machine words of work and a whole
# expression (at most 200 characters) takes microseconds: it can run on the event loop.
MAX_INT_BITS = 1024
MAX_ROUND_DIGITS = 100


class Retrieving(Protocol):
    """What the retrieval tool needs: ``welip.rag.Retriever`` or a fake."""

    async def retrieve(self, query: str) -> list[Any]: ...


@dataclass(frozen=True)
class Tool:
    """A tool an agent can call with one string argument."""

    name: str
    description: str
    run: Callable[[str], Awaitable[str]]


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class _TooLarge(ArithmeticError):
    """An intermediate result past the calculator's bounds."""

    def __init__(self) -> None:
        super().__init__("result too large (the calculator's numbers stay below 1.8e308)")


def _round(value: float, digits: int | None = None) -> float:
    # round(x, -n) builds 10**n: n is bounded like every other number.
    if digits is None:
        return round(value)
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise ValueError(
            f"round() takes a whole number of digits between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}"
        )
    return round(value, digits)


_FUNCTIONS: dict[str, Callable[..., float]] = {"sqrt": math.sqrt, "abs": abs, "round": _round}


def calculate(expression: str) -> str:
    """Evaluate arithmetic (``+ - * / // % **``, parentheses, sqrt/abs/round) without ``eval``.

    Every intermediate result is bounded (a finite real number below 2**1024, checked before
    an operation that could exceed it is computed), so any expression the tool accepts is
    evaluated in microseconds; anything else is answered ``error: ...``.
    """
    # Small models write "17 * 23 = ?" or "3 + 4?": keep the left-hand side.
    text = (
        expression.split("=")[0]
        .strip()
        .rstrip("?")
        .replace("^", "**")
        .replace("\u00d7", "*")
        .replace("\u00f7", "/")
    )
    if not text:
        return "error: empty expression"
    if len(text) > MAX_EXPRESSION_CHARS:
        return f"error: expression longer than {MAX_EXPRESSION_CHARS} characters"
    try:
        value = _eval(ast.parse(text, mode="eval").body)
    except ZeroDivisionError:
        return "error: division by zero"
    except (SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError) as exc:
        return f"error: {exc}" if str(exc) else "error: not an arithmetic expression"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


def _checked(value: Any) -> Any:
    if isinstance(value, complex):
        raise ValueError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _TooLarge
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _TooLarge
    return value


def _predict(op: ast.operator, left: Any, right: Any) -> None:
    # The two operations whose integer result can outgrow their operands by far.
    if not (isinstance(left, int) and isinstance(right, int)):
        return  # a float result is computed in constant time; inf and overflow are checked after
    if isinstance(op, ast.Mult) and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
        raise _TooLarge
    # |left| >= 2**(bits - 1), so its power is at least 2**((bits - 1) * right).
    if isinstance(op, ast.Pow) and abs(left) > 1 and (left.bit_length() - 1) * right > MAX_INT_BITS:
        raise _TooLarge


def _eval(node: ast.AST) -> Any:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    ):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        _predict(node.op, left, right)
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _checked(_FUNCTIONS[node.func.id](*[_eval(a) for a in node.args]))
    raise ValueError("not an arithmetic expression")


def current_time(zone: str) -> str:
    """The current time in ``zone`` (an IANA name; UTC when empty), ISO 8601."""
    name = zone.strip() or "UTC"
    try:
        tz: Any = UTC if name.upper() == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"error: unknown time zone {name!r}; use an IANA name such as Asia/Seoul"
    return datetime.now(tz).isoformat(timespec="seconds")


def format_chunks(chunks: list[Any], max_chars: int) -> str:
    """Retrieved chunks as context for an LLM: ``[id] title (source)`` then the text."""
    parts: list[str] = []
    used = 0
    for chunk in chunks:
        block = f"[{chunk.chunk_id}] {chunk.title} ({chunk.source})\n{chunk.text.strip()}"
        if parts and used + len(block) > max_chars:
            break
        parts.append(block[:max_chars])
        used += len(block)
    return "\n\n".join(parts) if parts else "(nothing found)"


def build_tools(
    names: Sequence[str], retriever: Retrieving | None, max_context_chars: int = 3000
) -> list[Tool]:
    """The named tools, in the order given."""

    async def calculator(arg: str) -> str:
        return calculate(arg)

    async def now(arg: str) -> str:
        return current_time(arg)

    async def retrieve(arg: str) -> str:
        if retriever is None:
            return "error: no retrieval configured"
        return format_chunks(await retriever.retrieve(arg), max_context_chars)

    async def create_ticket(arg: str) -> str:
        # Stands in for an action with side effects (a ticket, an e-mail): it only runs
        # once a human approved it, and records what it did in the agent's state.
        return f"created ticket T-{uuid.uuid4().hex[:8]}: {arg.strip()[:200]}"

    tools = {
        "calculator": Tool("calculator", "Evaluates arithmetic, e.g. `(17 + 5) * 3`.", calculator),
        "current_time": Tool(
            "current_time", "The current date and time; input: an IANA time zone or empty for UTC.", now
        ),
        "retrieve": Tool("retrieve", "Searches WeLIP's documentation; input: a search query.", retrieve),
        "create_ticket": Tool(
            "create_ticket", "Opens a support ticket; input: its summary. Needs approval.", create_ticket
        ),
    }
    return [tools[name] for name in names]
