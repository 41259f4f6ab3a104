"""Schemathesis over an app's own OpenAPI spec: every operation, valid and invalid requests (issue 16).

Shared by the gateway's and the agents' fuzz tests (and the integration test against the
live app). Each operation's requests are generated from the spec, in Schemathesis's
positive mode (what the spec allows) and negative mode (what it forbids), sent as one
caller, and each answer is checked: no 5xx (``not_a_server_error``) but a deliberate 501
``not_implemented`` (:func:`no_server_error`), and every 4xx and 501 body in the OpenAI
error shape (:func:`openai_error_shape`).

Examples are derandomized (the same on every run) and Hypothesis keeps no database in
the work tree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error

ERROR_FIELDS = {"message", "type", "param", "code"}

Send = Callable[[Case], httpx.Response]
"""Sends a generated request as one caller and returns the whole answer."""


def openai_error_shape(ctx: Any, response: schemathesis.Response, case: Case) -> bool | None:
    """Every 4xx and 501 answer is an OpenAI error body: ``{"error": {message, type, param, code}}``."""
    if not (400 <= response.status_code < 500 or response.status_code == 501):
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.text[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(body) == {"error"}, f"not an OpenAI error body: {body!r}"
    assert set(error) == ERROR_FIELDS, f"error fields {sorted(error)}, not {sorted(ERROR_FIELDS)}"
    for name in ("message", "type", "code"):
        assert isinstance(error[name], str) and error[name], f"error.{name} is {error[name]!r}"
    assert error["param"] is None or isinstance(error["param"], str), f"error.param is {error['param']!r}"
    return None


def no_server_error(ctx: Any, response: schemathesis.Response, case: Case) -> bool | None:
    """No 5xx, except a 501 whose error code is ``not_implemented``: a feature the request
    names that the app refuses on purpose rather than ignores (the agents API's LangGraph
    fields and routes WeLIP does not implement). Its body is checked like a 4xx's."""
    if response.status_code == 501:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        assert code == "not_implemented", f"501 without code not_implemented: {response.text[:200]!r}"
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, openai_error_shape]


def operations(schema: schemathesis.BaseSchema) -> dict[str, Any]:
    """The spec's operations by label (``POST /v1/chat/completions``)."""
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[operation.label] = operation
    return found


def request_kwargs(case: Case) -> dict[str, Any]:
    """The case as keyword arguments of :meth:`httpx.AsyncClient.request` (or ``httpx.request``)."""
    kwargs = case.as_transport_kwargs(base_url="")
    kwargs.pop("cookies", None)
    if "files" in kwargs:
        # httpx streams a multipart body, which schemathesis cannot read back to check or
        # report the case: it is encoded here, whole.
        # Negative cases put any JSON value in a part: sent as its JSON text.
        files = kwargs.pop("files")
        parts = [
            (name, (value[0], _part(value[1]), *value[2:]) if isinstance(value, tuple) else _part(value))
            for name, value in (files.items() if isinstance(files, dict) else files)
        ]
        fields = {name: _part(value) for name, value in (kwargs.pop("data", None) or {}).items()}
        request = httpx.Request(kwargs["method"], "http://fuzz", files=parts, data=fields)
        kwargs["content"] = request.read()
        headers = {k: v for k, v in kwargs.get("headers", {}).items() if k.lower() != "content-type"}
        kwargs["headers"] = {**headers, "content-type": request.headers["content-type"]}
    data = kwargs.pop("data", None)
    if data is not None:
        kwargs["content"] = data if isinstance(data, bytes) else str(data).encode()
    return kwargs


def _part(value: Any) -> bytes | str:
    return value if isinstance(value, bytes | str) else json.dumps(value, default=str)


def fuzz(
    operation: Any,
    send: Send,
    *,
    max_examples: int,
    steer: Callable[[Any], st.SearchStrategy[Case]] | None = None,
) -> None:
    """Send ``max_examples`` generated requests per mode to ``operation``; raise on the first failed check.

    ``steer(mode)``, when given, is an extra strategy of cases steered towards the app's
    deeper paths (a model or thread that exists), drawn half of the time.
    """
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategy: st.SearchStrategy[Case] = operation.as_strategy(generation_mode=mode)
        if steer is not None:
            strategy = st.one_of(strategy, steer(mode))

        @given(case=strategy)
        @settings(
            max_examples=max_examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Case) -> None:
            response = send(case)
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            # Nothing in the operation's spec can be made invalid (only free-form strings, say).
            if mode is GenerationMode.POSITIVE:
                raise
