"""A small OpenAI-compatible HTTP client for evaluation: bounded, retried, fail-fast.

``httpx`` rather than the ``openai`` SDK: the loglikelihood requests need vLLM's
``echo`` + ``logprobs`` on ``/completions`` and guided JSON fields that the SDK only
passes as extras, and the retry policy (429 ``Retry-After``, 5xx, connection errors)
is the job's own.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import httpx

from welip.evaluation._config import EndpointTarget
from welip.observability import inject_traceparent

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class EndpointUnavailable(RuntimeError):
    """The endpoint cannot serve the evaluation at all (unreachable, auth, unknown model)."""


class RequestFailed(RuntimeError):
    """One request failed for good (a 4xx, or retries spent); recorded on its sample."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _headers(target: EndpointTarget) -> dict[str, str]:
    key = os.environ.get(target.api_key_env) if target.api_key_env else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code') or error.get('type')}: {error.get('message')}"
    return str(body)[:300]


def check_endpoint(target: EndpointTarget) -> list[str]:
    """Fail fast before any work: the endpoint answers, the key is accepted, the model exists.

    Returns:
        The model ids the endpoint lists.

    Raises:
        EndpointUnavailable: with a message naming the URL and what went wrong.
    """
    url = f"{target.base_url.rstrip('/')}/models"
    timeout = httpx.Timeout(target.connect_timeout_s * 2, connect=target.connect_timeout_s)
    try:
        response = httpx.get(url, headers=_headers(target), timeout=timeout)
    except httpx.HTTPError as exc:
        raise EndpointUnavailable(f"endpoint {target.base_url} is unreachable: {exc!r}") from None
    if response.status_code in (401, 403):
        hint = f" (is ${target.api_key_env} set?)" if target.api_key_env else ""
        raise EndpointUnavailable(
            f"endpoint {target.base_url} refused the credentials{hint}: {_error_message(response)}"
        )
    if response.status_code != 200:
        raise EndpointUnavailable(
            f"endpoint {target.base_url} answered {response.status_code} to GET /models: "
            f"{_error_message(response)}"
        )
    models = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
    if target.model not in models:
        raise EndpointUnavailable(
            f"endpoint {target.base_url} does not serve model {target.model!r}; it lists {models}"
        )
    return [str(m) for m in models]


def endpoint_version(target: EndpointTarget) -> str | None:
    """The engine release the endpoint reports at ``/version`` (vLLM, the WeLIP gateway), or None."""
    root = target.base_url.rstrip("/").removesuffix("/v1")
    try:
        response = httpx.get(f"{root}/version", headers=_headers(target), timeout=target.connect_timeout_s)
        version = response.json().get("version") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return str(version) if version else None


class Endpoint:
    """Async requests to one endpoint, at most ``max_concurrency`` in flight.

    Create it inside the event loop that uses it (the semaphore belongs to that loop).
    """

    def __init__(self, target: EndpointTarget) -> None:
        self.target = target
        self._client = httpx.AsyncClient(
            base_url=target.base_url.rstrip("/") + "/",
            headers=_headers(target),
            timeout=httpx.Timeout(target.timeout_s, connect=target.connect_timeout_s),
            limits=httpx.Limits(max_connections=target.max_concurrency),
            event_hooks={"request": [inject_traceparent]},  # the gateway's spans join the batch's trace
        )
        self._slots = asyncio.Semaphore(target.max_concurrency)
        self.retries = 0
        # Cleared by a judge when the endpoint refuses `response_format` (no guided decoding).
        self.structured_output = True

    async def aclose(self) -> None:
        await self._client.aclose()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                return min(float(retry_after), self.target.backoff_max_s)
            except ValueError:
                pass
        base = min(self.target.backoff_initial_s * 2**attempt, self.target.backoff_max_s)
        return base * (0.5 + random.random() / 2)  # nosec B311 # jitter: replicas do not retry in step

    async def post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """POST ``body`` to ``path``; the JSON answer and the latency of the last attempt in ms.

        Raises:
            RequestFailed: a non-retryable status, or retries spent.
        """
        attempt = 0
        while True:
            response: httpx.Response | None = None
            async with self._slots:
                started = time.perf_counter()
                try:
                    response = await self._client.post(path, json=body)
                    failure = None if response.status_code < 400 else _error_message(response)
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                latency_ms = (time.perf_counter() - started) * 1000
            if failure is None and response is not None:
                return response.json(), latency_ms
            status = response.status_code if response is not None else None
            if (status is not None and status not in _RETRY_STATUS) or attempt >= self.target.max_retries:
                raise RequestFailed(f"{status or 'no response'}: {failure}", status)
            await asyncio.sleep(self._delay(attempt, response))
            attempt += 1
            self.retries += 1
