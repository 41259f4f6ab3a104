"""Observability: OpenTelemetry traces, span conventions, structured logs.

Traces are exported over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (Phoenix is the
local stack's UI: ``make phoenix``); Prometheus metrics go through Ray's metrics export
(each area defines its own series); logs are JSON lines carrying the trace id.
"""

from welip.observability._logging import (
    SERVE_LOGGING_CONFIG,
    JsonLineFormatter,
    TraceContextFilter,
    configure_job_logging,
    install_log_context,
)
from welip.observability._spans import (
    message_attributes,
    model_attributes,
    token_attributes,
    trace_generation,
)
from welip.observability._tracing import (
    CONTENT_ENV,
    capture_content,
    extract_context,
    flush_tracing,
    inject_context,
    inject_traceparent,
    job_span,
    setup_tracing,
    shutdown_tracing,
    trace_id_of,
    tracing_enabled,
)

__all__ = [
    "CONTENT_ENV",
    "SERVE_LOGGING_CONFIG",
    "JsonLineFormatter",
    "TraceContextFilter",
    "capture_content",
    "configure_job_logging",
    "extract_context",
    "flush_tracing",
    "inject_context",
    "inject_traceparent",
    "install_log_context",
    "job_span",
    "message_attributes",
    "model_attributes",
    "setup_tracing",
    "shutdown_tracing",
    "token_attributes",
    "trace_generation",
    "trace_id_of",
    "tracing_enabled",
]
