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
MAX_POWER = 100


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
_FUNCTIONS: dict[str, Callable[..., float]] = {"sqrt": math.sqrt, "abs": abs, "round": round}


def calculate(expression: str) -> str:
    """Evaluate arithmetic (``+ - * / // % **``, parentheses, sqrt/abs/round) without ``eval``."""
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
    except (SyntaxError, ValueError, TypeError, OverflowError) as exc:
        return f"error: {exc}" if str(exc) else "error: not an arithmetic expression"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


def _eval(node: ast.AST) -> Any:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    ):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_POWER:
            raise ValueError(f"exponent above {MAX_POWER}")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*[_eval(a) for a in node.args])
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
