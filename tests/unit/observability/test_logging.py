"""Structured logs: JSON lines with the current span's ids, safe extras, no secrets."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import logging.handlers
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from ray._common.formatters import JSONFormatter

from welip.observability._logging import (
    CONTENT_FIELDS,
    REDACTED,
    JsonLineFormatter,
    TraceContextFilter,
    _ServeForwarder,
    _StderrHandler,
    configure_job_logging,
    install_log_context,
)
from welip.observability._tracing import CONTENT_ENV

KEY = "wlp_" + "k3Y-s3cret_" * 4
# A JWT's shape (header.payload.signature), as an OIDC bearer token has it.
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


class Opaque:
    """An object whose ``str`` holds a secret: it must never reach a log line."""

    def __str__(self) -> str:
        return f"Opaque(key={KEY})"

    __repr__ = __str__


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def tracer(exporter: InMemorySpanExporter) -> Tracer:
    # A provider of the test's own: the current span lives in OpenTelemetry's context,
    # whatever the global provider is, so the global one (other tests' business) stays untouched.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("welip.tests")


@pytest.fixture
def json_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose lines (JsonLineFormatter behind TraceContextFilter) land in a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger("welip.tests.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_line_in_a_span_carries_its_trace_and_span_id(
    json_logger: tuple[logging.Logger, io.StringIO], tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    logger, stream = json_logger
    with tracer.start_as_current_span("welip.gateway.request") as span:
        logger.info("request", extra={"request_id": "req-1", "principal": "key_1", "model": "m"})
    (line,) = lines(stream)
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16
    assert line["trace_id"] == line["trace_id"].lower()
    # The ids are those of the span the SDK exported.
    exported = [s for s in exporter.get_finished_spans() if s.name == "welip.gateway.request"]
    assert exported[-1].context.trace_id == context.trace_id
    assert line["name"] == "welip.tests.logging"
    assert (line["levelname"], line["message"]) == ("INFO", "request")
    assert (line["request_id"], line["principal"], line["model"]) == ("req-1", "key_1", "m")


def test_line_outside_a_span_has_no_ids(json_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_logger
    logger.info("no span here", extra={"model": "m"})
    (line,) = lines(stream)
    assert "trace_id" not in line and "span_id" not in line
    assert line["model"] == "m"


def test_explicit_ids_are_kept(json_logger: tuple[logging.Logger, io.StringIO], tracer: Tracer) -> None:
    logger, stream = json_logger
    with tracer.start_as_current_span("other"):
        logger.info("settled later", extra={"trace_id": "a" * 32, "span_id": "b" * 16})
    (line,) = lines(stream)
    assert (line["trace_id"], line["span_id"]) == ("a" * 32, "b" * 16)


def test_non_json_extras_do_not_crash_and_never_use_str(
    json_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_logger
    extra = {
        "opaque": Opaque(),
        "nested": {"ok": [1, 2.5, None, True], "bad": Opaque(), 3: "int key", Opaque(): "dropped"},
        "tags": {"a", "b"},
        "raw": b"bytes",
        "ratio": float("nan"),
    }
    logger.info("odd extras", extra=extra)
    raw = stream.getvalue()
    assert KEY not in raw
    (line,) = lines(stream)
    assert line["opaque"] == "<Opaque>"
    assert line["nested"] == {"ok": [1, 2.5, None, True], "bad": "<Opaque>", "3": "int key"}
    assert (line["tags"], line["raw"], line["ratio"]) == ("<set>", "<bytes>", "nan")


def test_formatter_alone_is_safe() -> None:
    """Without the filter (a handler set up elsewhere), the formatter still never fails."""
    record = logging.LogRecord("welip.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    record.opaque = Opaque()
    line = json.loads(JsonLineFormatter().format(record))
    assert (line["message"], line["opaque"]) == ("hello there", "<Opaque>")


def test_secrets_are_masked(json_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_logger
    logger.info(
        "auth with %s then Bearer %s", KEY, JWT, extra={"api_key": "anything", "header": f"Bearer {KEY}"}
    )
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        logger.exception("failed")
    raw = stream.getvalue()
    assert KEY not in raw and JWT not in raw
    first, second = lines(stream)
    assert first["message"] == f"auth with {REDACTED} then Bearer {REDACTED}"
    assert first["api_key"] == REDACTED
    assert first["header"] == f"Bearer {REDACTED}"
    assert second["levelname"] == "ERROR"
    assert "ValueError: bad key" in second["exc_text"] and REDACTED in second["exc_text"]
    # A key's 10-character display prefix (what the admin API lists) stays readable.
    logger.info("key prefix", extra={"key_prefix": "wlp_abcdef"})
    assert lines(stream)[-1]["key_prefix"] == "wlp_abcdef"


def test_content_fields_only_with_content_capture(
    json_logger: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = json_logger
    monkeypatch.delenv(CONTENT_ENV, raising=False)
    logger.info("no content", extra={"prompt": "tell me a secret", "model": "m"})
    monkeypatch.setenv(CONTENT_ENV, "true")
    logger.info("content", extra={"prompt": "tell me a secret"})
    without, with_ = lines(stream)
    assert "prompt" not in without and without["model"] == "m"
    assert with_["prompt"] == "tell me a secret"
    assert "prompt" in CONTENT_FIELDS


def test_field_names_match_ray_serve_json() -> None:
    """Every field Ray's JSON formatter writes (with ``name``, as the shipped configs ask) is here."""
    record = logging.LogRecord("welip.x", logging.WARNING, __file__, 7, "m", None, None)
    record.request_id = "r"
    ray_formatter = JSONFormatter()
    ray_formatter.set_additional_log_standard_attrs(["name"])
    ray_line = json.loads(ray_formatter.format(record))
    ours = json.loads(JsonLineFormatter().format(record))
    assert set(ray_line) <= set(ours)
    for key in ("asctime", "levelname", "name", "message", "request_id"):
        assert ours[key] == ray_line[key]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_job_logging_writes_json_to_stderr_once(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str], tracer: Tracer
) -> None:
    configure_job_logging("INFO")
    configure_job_logging("DEBUG")
    assert sum(isinstance(h, _StderrHandler) for h in root_logger.handlers) == 1
    assert root_logger.level == logging.DEBUG
    with tracer.start_as_current_span("job") as span:
        logging.getLogger("welip.evaluate").info("scored", extra={"model": "m", "score": 0.5})
    err = capsys.readouterr().err
    (line,) = [json.loads(x) for x in err.splitlines() if '"welip.evaluate"' in x]
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert (line["name"], line["model"], line["score"]) == ("welip.evaluate", "m", 0.5)


def test_install_log_context_outside_a_replica_does_nothing(root_logger: logging.Logger) -> None:
    before = list(root_logger.handlers)
    assert install_log_context() is False
    assert root_logger.handlers == before
    assert not any(isinstance(f, TraceContextFilter) for f in logging.getLogger("ray.serve").filters)


@pytest.fixture
def serve_replica_log(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Path]:
    """Logging as Serve sets it up in a replica with JSON encoding: ``ray.serve`` alone, not
    propagating, a buffer in front of the replica's file, Ray's own JSON formatter."""
    from ray import serve

    monkeypatch.setattr(serve, "get_replica_context", lambda: object())
    serve_logger, welip = logging.getLogger("ray.serve"), logging.getLogger("welip")
    saved = (list(serve_logger.handlers), list(serve_logger.filters), serve_logger.propagate)
    saved_level = (serve_logger.level, welip.level)
    path = tmp_path / "replica_welip_Gateway_abc.log"
    file_handler = logging.handlers.RotatingFileHandler(path)
    formatter = JSONFormatter()
    formatter.set_additional_log_standard_attrs(["name"])
    file_handler.setFormatter(formatter)
    buffer = logging.handlers.MemoryHandler(capacity=1, target=file_handler, flushLevel=logging.ERROR)
    serve_logger.handlers[:] = [buffer]
    serve_logger.propagate = False
    serve_logger.setLevel(logging.INFO)
    welip.setLevel(logging.NOTSET)
    yield path
    serve_logger.handlers[:], serve_logger.filters[:], serve_logger.propagate = saved
    serve_logger.setLevel(saved_level[0])
    welip.setLevel(saved_level[1])
    file_handler.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_install_log_context_in_a_replica(
    serve_replica_log: Path, root_logger: logging.Logger, tracer: Tracer
) -> None:
    root_logger.setLevel(logging.WARNING)  # as in a Ray worker
    assert install_log_context() is True
    assert install_log_context() is True  # idempotent
    assert sum(isinstance(h, _ServeForwarder) for h in root_logger.handlers) == 1
    serve_logger = logging.getLogger("ray.serve")
    assert sum(isinstance(f, TraceContextFilter) for f in serve_logger.filters) == 1

    access = logging.getLogger("welip.gateway.access")
    with tracer.start_as_current_span("welip.gateway.request") as span:
        access.info("request", extra={"principal": "key_1", "model": "m", "status": 200, "odd": Opaque()})
        access.debug("below the replica's level")
        logging.getLogger("some.library").info("library INFO stays out (root at WARNING)")
        logging.getLogger("some.library").warning("library warning")
        serve_logger.info("serve's own line")
    found = read_log(serve_replica_log)
    assert [line["name"] for line in found] == ["welip.gateway.access", "some.library", "ray.serve"]
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert all(line["trace_id"] == trace_id for line in found)
    request = found[0]
    assert (request["principal"], request["model"], request["status"]) == ("key_1", "m", 200)
    assert request["odd"] == "<Opaque>" and KEY not in serve_replica_log.read_text()


def test_replica_log_survives_a_library_reconfiguring_logging(serve_replica_log: Path) -> None:
    """vLLM's engine start runs dictConfig, which closes every handler: the file comes back."""
    install_log_context()
    logging.getLogger("welip.gateway").info("before the engine starts")
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"vllm": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}},
            "loggers": {"vllm": {"handlers": ["vllm"], "propagate": False}},
        }
    )
    logging.getLogger("welip.gateway").info("after the engine started")
    logging.getLogger("ray.serve").info("serve's line after")
    assert [line["message"] for line in read_log(serve_replica_log)] == [
        "before the engine starts",
        "after the engine started",
        "serve's line after",
    ]
