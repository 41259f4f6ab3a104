"""Request bodies as strict JSON (RFC 8259): UTF-8, finite numbers, bounded nesting.

Python's :func:`json.loads` takes more than JSON: ``NaN`` and ``Infinity`` (and
``1e999``, which becomes ``inf``), any nesting until it raises :class:`RecursionError`,
and raises a bare :class:`ValueError` for integers past Python's digit limit. Every
ingress (the gateway's OpenAI routes, the agents app) parses bodies here, so each of
these is a 400 ``invalid_json`` in the OpenAI error shape, never a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

from welip.api._errors import OpenAIError, invalid_request

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a body may have (the body itself is level 1).

OpenAI request bodies, tool schemas included, stay far below it; code that walks the
parsed body recursively (validation, serialization, checkpointing) stays far from
Python's recursion limit.
"""


class _NotFinite(ValueError):
    pass


def load_json(raw: bytes) -> Any:
    """Parse a request body as strict JSON.

    Args:
        raw: The body as received.

    Returns:
        The parsed value.

    Raises:
        OpenAIError: 400 ``invalid_json`` when the body is not UTF-8, not JSON, holds a
            non-finite number (``NaN``, ``Infinity``, a float that overflows) or an
            integer past Python's digit limit, or nests deeper than :data:`MAX_JSON_DEPTH`.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid_json(f"it is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _invalid_json(f"it nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # not JSON, not finite, or an integer past sys.get_int_max_str_digits()
        raise _invalid_json(str(exc)) from None
    # Counting brackets is cheap and bounds the nesting from above (brackets in strings
    # count too): only a body with many of them is walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise _invalid_json(f"it nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _invalid_json(why: str) -> OpenAIError:
    return invalid_request(f"The request body is not valid JSON: {why}.", code="invalid_json")


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotFinite(f"{text} is out of the range of a double")
    return number


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and objects more than ``limit`` levels deep (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
