"""Sending a batch's lines to the gateway, and the output and error lines made of the answers.

:class:`LineSender` is the Ray Data stage: each call sends its lines concurrently over one
connection pool, retrying a line answered 429 or 502-504 (or not answered at all) with
backoff, honoring ``Retry-After`` up to :data:`MAX_RETRY_AFTER_S`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from typing import Any

import httpx
import numpy as np

from welip.batches._settings import API_KEY_ENV, CALLER_TOKEN_ENV, BatchJobSettings

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0
"""A line told to wait longer (an exhausted token budget says a day) is not retried."""
_CALLER_TOKEN_HEADER = "x-welip-caller-token"  # nosec B105 # welip.trust's header name, not a secret

Batch = dict[str, np.ndarray]


def auth_headers() -> dict[str, str]:
    """The gateway key and caller token from the job's environment, as request headers."""
    headers = {}
    if key := os.environ.get(API_KEY_ENV):
        headers["authorization"] = f"Bearer {key}"
    if token := os.environ.get(CALLER_TOKEN_ENV):
        headers[_CALLER_TOKEN_HEADER] = token
    return headers


class LineSender:
    """Ray Data UDF: sends each ``line`` (an input line's JSON) to the gateway; a ``result`` per line.

    A result is ``{"custom_id", "status_code", "request_id", "body"}``, with ``status_code``
    None when no answer came (``body`` then says why).
    """

    def __init__(
        self,
        settings: BatchJobSettings,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._headers = auth_headers() if headers is None else headers
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, batch: Batch) -> Batch:
        if self._client is None:  # on the UDF's own event loop
            self._client = httpx.AsyncClient(
                base_url=self._settings.gateway_url,
                headers=self._headers,
                timeout=self._settings.request_timeout_s,
                limits=httpx.Limits(max_connections=self._settings.concurrency),
                transport=self._transport,
            )
        results = await asyncio.gather(
            *(self._send(self._client, json.loads(line)) for line in batch["line"])
        )
        return {"result": np.array([json.dumps(r) for r in results], dtype=object)}

    async def _send(self, client: httpx.AsyncClient, row: dict[str, Any]) -> dict[str, Any]:
        content = json.dumps(row["body"]).encode()
        headers = {"content-type": "application/json", "x-request-id": uuid.uuid4().hex}
        retries = self._settings.max_retries
        for attempt in range(retries + 1):
            try:
                response = await client.post(row["url"], content=content, headers=headers)
            except httpx.TransportError as exc:
                if attempt < retries:
                    await asyncio.sleep(_backoff_s(attempt))
                    continue
                why = f"The gateway did not answer: {type(exc).__name__}: {exc}"
                return _result(row, None, None, _error_body(why, "gateway_unreachable"))
            wait_s = _retry_wait_s(response, attempt)
            if response.status_code in RETRY_STATUSES and attempt < retries and wait_s is not None:
                await asyncio.sleep(wait_s)
                continue
            # Serve echoes the request id it used (ours, unless a proxy replaced it).
            request_id = response.headers.get("x-request-id") or headers["x-request-id"]
            return _result(row, response.status_code, request_id, _body(response))
        raise AssertionError("unreachable")  # the last attempt always returns


def output_line(result: dict[str, Any]) -> dict[str, Any]:
    """The output or error file's line for one result, in OpenAI's shape."""
    line: dict[str, Any] = {"id": "batch_req_" + uuid.uuid4().hex, "custom_id": result["custom_id"]}
    if result["status_code"] is None:
        error = result["body"].get("error", {})
        return {
            **line,
            "response": None,
            "error": {"code": error.get("code"), "message": error.get("message")},
        }
    response = {
        "status_code": result["status_code"],
        "request_id": result["request_id"],
        "body": result["body"],
    }
    return {**line, "response": response, "error": None}


def unsent_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """The error file's line for a request never sent (``batch_expired``, ``batch_cancelled``)."""
    return {
        "id": "batch_req_" + uuid.uuid4().hex,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def _result(row: dict[str, Any], status: int | None, request_id: str | None, body: Any) -> dict[str, Any]:
    return {"custom_id": row["custom_id"], "status_code": status, "request_id": request_id, "body": body}


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return _error_body(response.text[:2000], "invalid_response")


def _error_body(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


def _backoff_s(attempt: int) -> float:
    return float(min(MAX_RETRY_AFTER_S, 0.5 * 2**attempt) * (0.5 + random.random() / 2))  # nosec B311


def _retry_wait_s(response: httpx.Response, attempt: int) -> float | None:
    """How long to wait before retrying; None when Retry-After asks more than we wait."""
    header = response.headers.get("retry-after")
    if header is None:
        return _backoff_s(attempt)
    try:
        wait_s = float(header)
    except ValueError:
        return _backoff_s(attempt)
    return wait_s if wait_s <= MAX_RETRY_AFTER_S else None
