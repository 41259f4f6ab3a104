"""Span attributes in both conventions WeLIP's traces are read with, and the engine's span.

OpenInference (what Phoenix reads: ``openinference.span.kind``, ``llm.model_name``,
``llm.token_count.*``, ``llm.input_messages.*``) and OpenTelemetry GenAI
(``gen_ai.request.model``, ``gen_ai.usage.*``) name the same facts; WeLIP sets both.
Message text goes on a span only when :func:`capture_content` is on.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from welip.observability._tracing import capture_content

tracer = trace.get_tracer("welip")

_USAGE_MARK = '"usage":{'


def model_attributes(model: str, *, system: str | None = None) -> dict[str, Any]:
    """The model a span is about, in both conventions."""
    attributes: dict[str, Any] = {"llm.model_name": model, "gen_ai.request.model": model}
    if system:
        attributes["llm.system"] = system
        attributes["gen_ai.system"] = system
    return attributes


def token_attributes(prompt: int | None, completion: int | None) -> dict[str, Any]:
    """Token counts in both conventions (only those known)."""
    attributes: dict[str, Any] = {}
    if prompt is not None:
        attributes["llm.token_count.prompt"] = prompt
        attributes["gen_ai.usage.input_tokens"] = prompt
    if completion is not None:
        attributes["llm.token_count.completion"] = completion
        attributes["gen_ai.usage.output_tokens"] = completion
    if prompt is not None and completion is not None:
        attributes["llm.token_count.total"] = prompt + completion
    return attributes


def message_attributes(prefix: str, messages: Iterable[Any]) -> dict[str, Any]:
    """``<prefix>.<i>.message.role/content`` of chat messages (dicts or objects with those fields)."""
    attributes: dict[str, Any] = {}
    for i, message in enumerate(messages):
        get = message.get if isinstance(message, Mapping) else lambda k, m=message: getattr(m, k, None)
        role, content = get("role"), get("content")
        if role is not None:
            attributes[f"{prefix}.{i}.message.role"] = str(role)
        if isinstance(content, str):
            attributes[f"{prefix}.{i}.message.content"] = content
        elif isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, Mapping)]
            attributes[f"{prefix}.{i}.message.content"] = "\n".join(t for t in texts if isinstance(t, str))
    return attributes


def _request_attributes(request: Any, operation: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation}
    for name, key in (
        ("max_tokens", "gen_ai.request.max_tokens"),
        ("max_completion_tokens", "gen_ai.request.max_tokens"),
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
    ):
        value = getattr(request, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[key] = value
    request_id = getattr(request, "request_id", None)
    if isinstance(request_id, str):
        attributes["welip.request_id"] = request_id
    if capture_content():
        messages = getattr(request, "messages", None)
        if messages is not None:
            attributes.update(message_attributes("llm.input_messages", messages))
        prompt = getattr(request, "prompt", None)
        if isinstance(prompt, str):
            attributes["input.value"] = prompt
    return attributes


class _GenerationWatch:
    """What the engine span learns from the items it relays: first item, usage, errors, text."""

    def __init__(self, span: Any, started: float, streaming: bool) -> None:
        self.span = span
        self.started = started
        self.streaming = streaming
        self.first = True
        self.text: list[str] = []
        self.capture = capture_content()

    def see(self, item: Any) -> None:
        if self.first:
            self.first = False
            ttft = time.perf_counter() - self.started
            # Streamed: the first chunk leaves with the first token; otherwise the whole answer.
            name = "gen_ai.server.time_to_first_token" if self.streaming else "welip.latency_s"
            self.span.set_attribute(name, ttft)
        for part in item if isinstance(item, list) else (item,):
            if isinstance(part, str):
                self._see_chunk(part)
            else:
                self._see_response(part)

    def _see_chunk(self, text: str) -> None:
        if _USAGE_MARK not in text and not self.capture:
            return
        for line in text.splitlines():
            if not line.startswith("data: {"):
                continue
            try:
                chunk = json.loads(line[6:])
            except ValueError:
                continue
            usage = chunk.get("usage")
            if usage:
                self.span.set_attributes(
                    token_attributes(usage.get("prompt_tokens"), usage.get("completion_tokens"))
                )
            if self.capture:
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") if delta else choice.get("text")
                    if isinstance(piece, str):
                        self.text.append(piece)

    def _see_response(self, response: Any) -> None:
        if type(response).__name__ == "ErrorResponse":
            error = getattr(response, "error", response)
            reason = str(getattr(error, "message", "") or "")[:200]
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, reason))
            return
        usage = getattr(response, "usage", None)
        if usage is not None:
            prompt = getattr(usage, "prompt_tokens", None)
            self.span.set_attributes(token_attributes(prompt, getattr(usage, "completion_tokens", None)))
        if self.capture:
            for choice in getattr(response, "choices", None) or ():
                message = getattr(choice, "message", None)
                piece: Any
                if message is not None:
                    piece = getattr(message, "content", None)
                else:
                    piece = getattr(choice, "text", None)
                if isinstance(piece, str):
                    self.text.append(piece)

    def finish(self) -> None:
        if self.capture and self.text:
            self.span.set_attributes(
                {
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": "".join(self.text),
                }
            )


async def trace_generation(
    items: AsyncIterator[Any],
    *,
    model: str,
    operation: str,
    request: Any,
    parent: otel_context.Context | None = None,
) -> AsyncGenerator[Any, None]:
    """Relay an engine's answer inside an ``LLM`` span: model, tokens, time to first token.

    Closing the returned generator closes ``items`` (vLLM aborts the request then).

    Args:
        items: What ``ray.serve.llm``'s engine yields for the request (SSE strings, lists
            of them, or one response object).
        model: The served model id (or adapter) the request runs on.
        operation: ``chat`` or ``completions``.
        request: The OpenAI request object (sampling options, messages when captured).
        parent: The caller's context when it crossed a process boundary; the current
            context otherwise.
    """
    attributes = {
        "openinference.span.kind": "LLM",
        **model_attributes(model, system="vllm"),
        **_request_attributes(request, "text_completion" if operation == "completions" else operation),
    }
    span = tracer.start_span(f"vllm.{operation}", context=parent, attributes=attributes)
    watch = _GenerationWatch(span, time.perf_counter(), bool(getattr(request, "stream", False)))
    try:
        async for item in items:
            watch.see(item)
            yield item
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        watch.finish()
        span.end()
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
