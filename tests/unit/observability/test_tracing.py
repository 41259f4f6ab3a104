"""Tracing set-up from the standard environment, and the engine's LLM span.

``setup_tracing`` installs a process-wide provider, so each case runs in a fresh
Python process that exports to the session's real Phoenix; the spans are read back
from Phoenix's API. The engine span is checked with an in-memory exporter.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ray.serve.llm.openai_api_models import ChatCompletionResponse

from tests.phoenix_server import PhoenixServer, list_projects, spans_of_trace
from welip.observability import CONTENT_ENV, trace_generation

PROBE = """
import json
from opentelemetry import trace
from welip.observability import flush_tracing, setup_tracing, tracing_enabled
exporting = setup_tracing("gateway")
with trace.get_tracer("probe").start_as_current_span("probe.span", attributes={"k": 1}) as span:
    trace_id = format(span.get_span_context().trace_id, "032x")
flush_tracing()
print(json.dumps({"exporting": exporting, "enabled": tracing_enabled(), "trace_id": trace_id}))
"""


def _probe(env: dict[str, str]) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_without_an_endpoint_nothing_is_installed_and_nothing_is_recorded() -> None:
    assert _probe({}) == {"exporting": False, "enabled": False, "trace_id": "0" * 32}
    disabled = _probe({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"})
    assert (disabled["exporting"], disabled["enabled"]) == (False, False)


def test_spans_reach_phoenix_over_http_in_the_welip_project(phoenix: PhoenixServer) -> None:
    result = _probe({"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.otlp_http_endpoint})
    assert (result["exporting"], result["enabled"]) == (True, True)
    (span,) = spans_of_trace(phoenix.url, result["trace_id"])
    assert (span["name"], span["project"], span["attributes"]["k"]) == ("probe.span", "welip", 1)


def test_grpc_protocol_and_service_name_pick_exporter_and_project(phoenix: PhoenixServer) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.otlp_grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "acme-llm",
    }
    result = _probe(env)
    (span,) = spans_of_trace(phoenix.url, result["trace_id"], project="acme-llm")
    assert span["name"] == "probe.span" and "acme-llm" in list_projects(phoenix.url)


def test_sampler_from_the_environment_drops_unsampled_traces(phoenix: PhoenixServer) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.otlp_http_endpoint, "OTEL_TRACES_SAMPLER": "always_off"}
    result = _probe(env)
    assert result["enabled"] is True
    with pytest.raises(TimeoutError):
        spans_of_trace(phoenix.url, result["trace_id"], timeout_s=3)


SECRET = "my secret prompt about the merger"


def _request(stream: bool) -> SimpleNamespace:
    return SimpleNamespace(
        model="m",
        stream=stream,
        messages=[{"role": "user", "content": SECRET}],
        max_tokens=8,
        temperature=0.0,
        request_id="req-1",
    )


def _sse(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"  # compact, as vLLM writes it


STREAM = [
    [_sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None})],
    [_sse({"choices": [{"index": 0, "delta": {"content": "The answer"}}], "usage": None})],
    _sse({"choices": [{"index": 0, "delta": {"content": " is 4."}}], "usage": None}),
    _sse({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}}),
    "data: [DONE]\n\n",
]


async def _items(items: list[Any], closed: list[bool]) -> AsyncIterator[Any]:
    try:
        for item in items:
            yield item
    finally:
        closed.append(True)


async def _relay(stream: AsyncIterator[Any], limit: int | None = None) -> list[Any]:
    out = []
    async for item in stream:
        out.append(item)
        if limit is not None and len(out) == limit:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return out


def _run(stream: AsyncIterator[Any], limit: int | None = None) -> list[Any]:
    return asyncio.run(_relay(stream, limit))


def _attributes_text(span: Any) -> str:
    return json.dumps(dict(span.attributes), default=str)


def test_stream_span_has_model_tokens_ttft_under_the_current_span(
    span_exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONTENT_ENV, raising=False)
    closed: list[bool] = []
    with trace.get_tracer("test").start_as_current_span("gateway") as parent:
        relayed = _run(
            trace_generation(_items(STREAM, closed), model="m", operation="chat", request=_request(True))
        )
    assert relayed == STREAM and closed == [True]
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "vllm.chat"]
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    a = span.attributes
    assert (a["openinference.span.kind"], a["llm.model_name"], a["gen_ai.request.model"]) == ("LLM", "m", "m")
    assert (a["llm.token_count.prompt"], a["gen_ai.usage.output_tokens"], a["llm.token_count.total"]) == (
        11,
        5,
        16,
    )
    assert a["gen_ai.server.time_to_first_token"] >= 0 and a["gen_ai.request.max_tokens"] == 8
    # Content capture is off: neither the prompt nor the answer is on the span.
    assert SECRET not in _attributes_text(span) and "The answer" not in _attributes_text(span)


def test_content_capture_puts_messages_and_answer_on_the_span(
    span_exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONTENT_ENV, "true")
    _run(trace_generation(_items(STREAM, []), model="m", operation="chat", request=_request(True)))
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "vllm.chat"]
    assert span.attributes["llm.input_messages.0.message.content"] == SECRET
    assert span.attributes["llm.input_messages.0.message.role"] == "user"
    assert span.attributes["llm.output_messages.0.message.content"] == "The answer is 4."


def test_whole_answer_span_and_an_engine_error_marks_the_span(span_exporter: InMemorySpanExporter) -> None:
    answer = ChatCompletionResponse(
        model="m",
        choices=[{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
        usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    )
    _run(trace_generation(_items([answer], []), model="m", operation="chat", request=_request(False)))
    # vLLM's ErrorResponse, as the span recognizes it (by type name, not by import).
    error = SimpleNamespace(message="prompt is too long", code=400)
    error_response = type("ErrorResponse", (), {"error": error})()
    _run(trace_generation(_items([error_response], []), model="m", operation="chat", request=_request(False)))
    ok, failed = [s for s in span_exporter.get_finished_spans() if s.name == "vllm.chat"][-2:]
    assert (ok.attributes["llm.token_count.prompt"], ok.attributes["llm.token_count.completion"]) == (3, 1)
    assert ok.status.status_code == trace.StatusCode.UNSET
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.status.description == "prompt is too long"


def test_closing_the_span_stream_early_closes_the_engine_stream(span_exporter: InMemorySpanExporter) -> None:
    closed: list[bool] = []
    stream = trace_generation(_items(STREAM, closed), model="m", operation="chat", request=_request(True))
    assert len(_run(stream, limit=1)) == 1
    assert closed == [True]  # vLLM aborts the request when its generator is closed
    assert [s.name for s in span_exporter.get_finished_spans()][-1] == "vllm.chat"
