"""Structured logs: JSON lines that carry the current trace, in Serve replicas and in jobs.

In a Serve replica, Ray Serve writes the log file
(``<session>/logs/serve/replica_<app>_<deployment>_<id>.log``) as JSON when the Serve
config says ``logging_config: {encoding: JSON}``, but only for its own logger,
``ray.serve``, and with no trace ids. :func:`install_log_context` (first thing in a
replica's ``__init__``) sends every other logger's records (``welip.*`` at the replica's
log level, third-party libraries at WARNING) through ``ray.serve``, and puts
:class:`TraceContextFilter` on that logger, so WeLIP's lines land in the same file with
Serve's fields (``asctime``, ``levelname``, ``name``, ``message``, ``request_id``,
``route``, ``application``, ``deployment``, ``replica``...) plus ``trace_id`` and
``span_id``, and any ``extra`` fields. Serve sets those five context fields itself, over
an ``extra`` of the same name (ray/serve/_private/logging_utils.py, ``ServeContextFilter``
and ``ServeComponentFilter``).

A Ray Job's entrypoint calls :func:`configure_job_logging` instead of
``logging.basicConfig``: the same field names, one JSON object a line, on stderr (which
Ray keeps as the job's log).

Keys and prompts stay out: ``extra`` values are kept only as JSON types (anything else
becomes ``"<TypeName>"``, never its ``str()``), fields named like a secret are redacted,
fields named like message content (``prompt``, ``messages``...) are dropped unless
content capture is on (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``), and
WeLIP API keys and JWTs are masked wherever they appear in a message or a string field.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import re
import sys
import traceback
import weakref
from typing import Any

from opentelemetry import trace

from welip.observability._tracing import capture_content

# The ``logging_config`` of every shipped Serve config (configs/serve/*.yaml, the RayService),
# kept equal to them by tests; for apps started from code (``serve.run(...,
# logging_config=SERVE_LOGGING_CONFIG)``). ``name`` is the logger; Serve's access log is off
# because the trust layer writes one line per request (logger ``welip.gateway.access``).
SERVE_LOGGING_CONFIG: dict[str, Any] = {
    "encoding": "JSON",
    "log_level": "INFO",
    "enable_access_log": False,
    "additional_log_standard_attrs": ["name"],
}
# The logger Ray Serve configures in each replica (ray.serve._private.constants.SERVE_LOGGER_NAME).
SERVE_LOGGER = "ray.serve"
WELIP_LOGGER = "welip"
REDACTED = "[REDACTED]"
# Attributes every LogRecord has; everything else on a record is an ``extra`` field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
# Field names whose values are credentials whatever they look like.
SECRET_FIELDS = frozenset({"api_key", "key", "authorization", "password", "secret", "token"})
# Field names that hold prompt or answer text: logged only with content capture on.
CONTENT_FIELDS = frozenset({"prompt", "messages", "completion", "content"})
# WeLIP API keys (welip.store: "wlp_" + 43 url-safe characters; the 10-character display
# prefix stays readable) and JWTs (OIDC bearer tokens).
_SECRET_TEXT = re.compile(r"wlp_[A-Za-z0-9_-]{8,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_MAX_DEPTH = 4


def redact(text: str) -> str:
    """``text`` with WeLIP API keys and JWTs replaced by ``[REDACTED]``."""
    if "wlp_" not in text and "eyJ" not in text:
        return text
    return _SECRET_TEXT.sub(REDACTED, text)


def format_exception(exc_info: Any) -> str:
    """A traceback as text, secrets masked.

    Not ``logging.Formatter.formatException``: that prints into a buffer, and in a Serve
    replica ``print`` is Serve's redirect, which writes a buffer's lines as tuple reprs
    (ray/serve/_private/logging_utils.py, ``redirected_print``).
    """
    return redact("".join(traceback.format_exception(*exc_info)).rstrip("\n"))


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON types only: secrets masked, other objects as ``"<TypeName>"``.

    An object's ``str()`` can hold anything (a request with its headers, a config with a
    key), so it is never used.
    """
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < _MAX_DEPTH and isinstance(value, dict):
        return {
            redact(str(k)): json_safe(v, depth + 1)
            for k, v in value.items()
            if isinstance(k, (str, int, float, bool))
        }
    if depth < _MAX_DEPTH and isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    return f"<{type(value).__name__}>"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``extra`` fields (every non-standard attribute)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class TraceContextFilter(logging.Filter):
    """Adds the current span's ``trace_id`` and ``span_id`` to a record; scrubs its fields.

    The ids are lowercase hex, 32 and 16 characters (as W3C ``traceparent`` and Phoenix
    show them); a record logged with no valid current span gets neither, and one that
    already carries them (an explicit ``extra``) keeps its own. Every ``extra`` field is
    made JSON-safe, so no formatter can fail on it: in a Serve replica a record that
    cannot be serialized makes Ray's JSON formatter fail on every later flush.
    The filter never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = format(context.trace_id, "032x")
                record.span_id = format(context.span_id, "016x")
        content = capture_content()
        for key, value in extra_fields(record).items():
            if key in SECRET_FIELDS:
                setattr(record, key, REDACTED)
            elif key in CONTENT_FIELDS and not content:
                delattr(record, key)
            else:
                setattr(record, key, json_safe(value))
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when set: the traceback is masked once, here.
            record.exc_text = format_exception(record.exc_info)
        return True


class JsonLineFormatter(logging.Formatter):
    """One JSON object a record, with the field names of Ray Serve's JSON logs.

    ``asctime``, ``levelname``, ``name`` (the logger), ``message``, ``filename``,
    ``lineno``, ``process``, then ``trace_id``/``span_id`` and every ``extra`` field
    (JSON-safe), ``exc_text`` for an exception, and ``timestamp_ns``.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "asctime": self.formatTime(record, self.datefmt),
            "levelname": record.levelname,
            "name": record.name,
            "message": redact(record.getMessage()),
            "filename": record.filename,
            "lineno": record.lineno,
            "process": record.process,
        }
        for key, value in extra_fields(record).items():
            line.setdefault(key, json_safe(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = format_exception(record.exc_info)
        if record.exc_text:
            line["exc_text"] = record.exc_text
        line["timestamp_ns"] = int(record.created * 1e9)
        return json.dumps(line, ensure_ascii=False, default=lambda o: f"<{type(o).__name__}>")


class _ServeForwarder(logging.Handler):
    """Hands records of other loggers to ``ray.serve``, whose handlers write the replica's file.

    Looked up on each record, not captured: Serve replaces its handlers when the
    deployment's logging config changes.
    """

    def emit(self, record: logging.LogRecord) -> None:
        serve_logger = logging.getLogger(SERVE_LOGGER)
        if record.levelno >= serve_logger.getEffectiveLevel():
            serve_logger.handle(record)


class _ServeFileGuard(logging.Filter):
    """Puts back the file behind Serve's log buffer when something has closed it.

    vLLM sets up its logging with ``logging.config.dictConfig`` when an engine starts
    (vllm/logger.py), which closes every handler in the process; Serve's buffer
    (a ``MemoryHandler``) then drops its file and keeps every later record in memory,
    unwritten, so an engine replica's log ends at engine start. Put on ``ray.serve``,
    this filter remembers each buffer's file and reattaches it before the record is
    handled (the file handler reopens its file on the next write), so nothing is lost.
    """

    def __init__(self) -> None:
        super().__init__()
        self._files: weakref.WeakKeyDictionary[logging.handlers.MemoryHandler, logging.Handler] = (
            weakref.WeakKeyDictionary()
        )

    def filter(self, record: logging.LogRecord | None = None) -> bool:
        for handler in logging.getLogger(SERVE_LOGGER).handlers:
            if not isinstance(handler, logging.handlers.MemoryHandler):
                continue
            if handler.target is not None:
                self._files[handler] = handler.target
            elif handler in self._files:
                handler.setTarget(self._files[handler])
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (as logging's last-resort handler)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


def install_log_context() -> bool:
    """Make this Serve replica's log file carry WeLIP's lines, with trace ids (idempotent).

    Call it first thing in a deployment's ``__init__`` (Serve has set up its logger by
    then; an engine has not started yet, see :class:`_ServeFileGuard`). It puts
    :class:`TraceContextFilter` on ``ray.serve`` (Serve's own lines get the ids
    too), forwards the root logger's records to ``ray.serve`` (``ray.serve`` does not
    propagate, so nothing is written twice), and sets the ``welip`` logger to Serve's
    level if it has none, so ``welip.*`` INFO lines are kept (the root logger of a Ray
    worker is at WARNING). Outside a replica (unit tests, jobs) it does nothing.

    Returns:
        Whether this process is a Serve replica (and is now set up).
    """
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    serve_logger = logging.getLogger(SERVE_LOGGER)
    if not any(isinstance(f, _ServeFileGuard) for f in serve_logger.filters):
        guard = _ServeFileGuard()
        guard.filter()  # remember the files now, before an engine's start closes them
        serve_logger.addFilter(guard)
    if not any(isinstance(f, TraceContextFilter) for f in serve_logger.filters):
        serve_logger.addFilter(TraceContextFilter())
    root = logging.getLogger()
    if not any(isinstance(h, _ServeForwarder) for h in root.handlers):
        root.addHandler(_ServeForwarder())
    welip = logging.getLogger(WELIP_LOGGER)
    if welip.level == logging.NOTSET:
        welip.setLevel(serve_logger.getEffectiveLevel())
    return True


def configure_job_logging(level: int | str = "INFO") -> None:
    """JSON log lines on stderr for a Ray Job's entrypoint (idempotent).

    Call it where a job would call ``logging.basicConfig``. The root logger gets one
    handler (:class:`JsonLineFormatter` behind :class:`TraceContextFilter`) and
    ``level``; handlers already there are left alone. A second call only sets the level.

    Args:
        level: The root logger's level (a name such as ``"INFO"`` or a number).
    """
    root = logging.getLogger()
    root.setLevel(level)
    if any(isinstance(h, _StderrHandler) for h in root.handlers):
        return
    handler = _StderrHandler()
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonLineFormatter())
    root.addHandler(handler)
