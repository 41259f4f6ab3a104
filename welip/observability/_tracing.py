"""OpenTelemetry tracing for every WeLIP process, configured by the standard environment.

Each process (a gateway or engine replica, the embeddings and agents replicas, a job's
driver and its Ray Data or Ray Train workers) calls :func:`setup_tracing` once with its
component name. With ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, an SDK ``TracerProvider`` exports spans over
OTLP (``http/protobuf`` by default, ``grpc`` with ``OTEL_EXPORTER_OTLP_PROTOCOL``),
sampled as ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` say (parent-based,
always on by default), named by ``OTEL_SERVICE_NAME``. Unset, or with
``OTEL_SDK_DISABLED=true``, nothing is installed: OpenTelemetry's API stays a no-op and
WeLIP skips the work of filling spans (:func:`tracing_enabled`).

One request is one trace: W3C ``traceparent`` comes in on HTTP and goes out on HTTP
calls (an agent calling the gateway), and crosses Ray Serve handles and Ray tasks as a
carrier dict (:func:`inject_context` / :func:`extract_context`).

Prompt and answer text is never put on spans unless
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` (:func:`capture_content`),
the OpenTelemetry GenAI convention's switch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger("welip.observability")

CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
# Phoenix files spans under this resource attribute's project (else "default").
PROJECT_ATTRIBUTE = "openinference.project.name"
DEFAULT_PROJECT = "welip"

_lock = threading.Lock()
_exporting = False
_processor: Any = None


def _endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def _protocol() -> str:
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )


def _exporter() -> Any:
    # Both exporters read their endpoint, headers, timeout and compression from the
    # OTEL_EXPORTER_OTLP_* variables themselves; the HTTP one appends /v1/traces.
    if _protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def setup_tracing(component: str) -> bool:
    """Export this process's spans over OTLP if the environment asks for it (idempotent).

    Args:
        component: What this process is (``gateway``, ``engine``, ``agents``,
            ``embeddings``, ``eval``, ``finetune``...): the ``service.name`` when
            ``OTEL_SERVICE_NAME`` is unset (``welip-<component>``), and the resource
            attribute ``welip.component`` always.

    Returns:
        Whether spans of this process are exported.
    """
    global _exporting, _processor
    if _exporting:
        return True
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or not _endpoint():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    with _lock:
        if _exporting:
            return True
        service = os.environ.get("OTEL_SERVICE_NAME")
        attributes: dict[str, Any] = {
            "welip.component": component,
            PROJECT_ATTRIBUTE: service or DEFAULT_PROJECT,
        }
        if not service:
            attributes["service.name"] = f"welip-{component}"
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            # Sampler from OTEL_TRACES_SAMPLER(_ARG); OTEL_RESOURCE_ATTRIBUTES merged in.
            provider = TracerProvider(resource=Resource.create(attributes))
            trace.set_tracer_provider(provider)
        # A provider set up before us (Ray Serve's own tracing, a test) exports ours too.
        _processor = BatchSpanProcessor(_exporter())
        provider.add_span_processor(_processor)
        _exporting = True
    logger.info("tracing: %s spans to %s (%s)", component, _endpoint(), _protocol())
    return True


def tracing_enabled() -> bool:
    """Whether spans made here are recorded (an SDK provider is installed)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def capture_content() -> bool:
    """Whether prompt and answer text may go on spans (off unless the environment says so)."""
    return os.environ.get(CONTENT_ENV, "").strip().lower() in ("true", "1", "yes")


def inject_context() -> dict[str, str]:
    """The current span as a W3C carrier (``traceparent``, ``tracestate``), for a hop."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


async def inject_traceparent(request: Any) -> None:
    """httpx request hook: carry the current span to the server called (W3C ``traceparent``)."""
    request.headers.update(inject_context())


def extract_context(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The context a carrier (HTTP headers, a dict passed over a handle) names, if any."""
    if not carrier:
        return None
    return propagate.extract(carrier)


def shutdown_tracing() -> None:
    """Export what is buffered and stop exporting (spans made later are not sent)."""
    global _exporting, _processor
    with _lock:
        if _processor is not None:
            _processor.shutdown()
        _processor, _exporting = None, False


@contextlib.contextmanager
def job_span(component: str, name: str, attributes: Mapping[str, Any]) -> Iterator[Any]:
    """A Ray Job's root span: tracing set up for ``component``, the span current inside the
    block, and everything buffered (the span itself included) exported after it ends, since
    a job's process may exit right after. Yields the span (see :func:`trace_id_of`)."""
    setup_tracing(component)
    try:
        with trace.get_tracer("welip.jobs").start_as_current_span(name, attributes=attributes) as span:
            yield span
    finally:
        flush_tracing()


def trace_id_of(span: Any) -> str | None:
    """A span's trace id as 32 hex digits, as trace UIs show it; None when it is not recorded."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def flush_tracing(timeout_s: float = 10) -> None:
    """Export what is buffered now (a job's end, before its process exits)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(int(timeout_s * 1000))
