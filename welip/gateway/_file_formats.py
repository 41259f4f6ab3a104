"""What an uploaded file must hold, by purpose: JSON Lines checked line by line at upload.

* ``batch``: OpenAI's batch input lines, ``{"custom_id", "method": "POST", "url", "body"}``
  with ``url`` ``/v1/chat/completions`` or ``/v1/embeddings``, ``body.model`` set and
  ``custom_id`` unique in the file.
* ``fine-tune``: what WeLIP's fine-tuning job reads (:func:`welip.training.to_messages`):
  OpenAI's chat rows ``{"messages": [...]}`` with an assistant message, or alpaca rows
  ``{"instruction", "output", "input"?, "system"?}``.
* ``evals``: any JSON object per line, as WeLIP's evaluation datasets are read.

Blank lines are skipped (and counted, so line numbers are the editor's). The first
problem refuses the file: 400 ``param: "file"``, naming the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, BinaryIO

from welip.api import OpenAIError, invalid_request

PURPOSES = ("batch", "fine-tune", "evals")
"""The purposes this gateway accepts."""

BATCH_URLS = ("/v1/chat/completions", "/v1/embeddings")


def invalid_file(message: str) -> OpenAIError:
    """400 ``invalid_file`` with ``param: "file"``."""
    return invalid_request(message, param="file", code="invalid_file")


def check_jsonl(content: BinaryIO, purpose: str) -> int:
    """Check every line of ``content`` for ``purpose``; the number of JSON lines.

    Reads ``content`` a line at a time and leaves it at its end.

    Raises:
        OpenAIError: 400 naming the first bad line (and field).
    """
    check_row = _CHECKS[purpose]
    seen: set[str] = set()
    rows = 0
    for number, raw in enumerate(content, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid_file(f"Line {number} is not UTF-8 (byte {exc.start + 1}).") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise invalid_file(f"Line {number} is not JSON: {exc.msg} at column {exc.colno}.") from None
        if not isinstance(row, dict):
            raise invalid_file(f"Line {number} must be a JSON object, not {_kind(row)}.")
        problem = check_row(row, seen)
        if problem is not None:
            field, why = problem
            raise invalid_file(f"Line {number}, field `{field}`: {why}.")
        rows += 1
    if rows == 0:
        raise invalid_file("The file is empty: a JSON Lines file needs at least one line.")
    return rows


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _batch_row(row: dict[str, Any], seen: set[str]) -> tuple[str, str] | None:
    custom_id = row.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id", "must be a non-empty string"
    if custom_id in seen:
        return "custom_id", f"{custom_id!r} is used by an earlier line; each must be unique"
    seen.add(custom_id)
    if row.get("method") != "POST":
        return "method", f'must be "POST", not {json.dumps(row.get("method"))}'
    if row.get("url") not in BATCH_URLS:
        return "url", f"must be one of {', '.join(BATCH_URLS)}, not {json.dumps(row.get('url'))}"
    body = row.get("body")
    if not isinstance(body, dict):
        return "body", "must be a JSON object (the request's body)"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "body.model", "must be a non-empty string"
    unknown = sorted(set(row) - {"custom_id", "method", "url", "body"})
    if unknown:
        return unknown[0], "is not a field of a batch request line"
    return None


def _fine_tune_row(row: dict[str, Any], seen: set[str]) -> tuple[str, str] | None:
    # Imported here: the training package is heavy, and only fine-tune uploads need it.
    from welip.training import to_messages

    try:
        to_messages(row)
    except ValueError as exc:
        return ("messages" if "messages" in row else "instruction/output"), str(exc)
    return None


def _evals_row(row: dict[str, Any], seen: set[str]) -> tuple[str, str] | None:
    return None  # any object: an eval suite's templates name the fields it reads


_CHECKS: dict[str, Callable[[dict[str, Any], set[str]], tuple[str, str] | None]] = {
    "batch": _batch_row,
    "fine-tune": _fine_tune_row,
    "evals": _evals_row,
}
