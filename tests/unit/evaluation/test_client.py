"""The endpoint client against a scripted HTTP server: retries, backoff, fail-fast checks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from welip.evaluation import EndpointTarget, EndpointUnavailable, check_endpoint
from welip.evaluation._client import Endpoint, RequestFailed


class Script:
    def __init__(self) -> None:
        self.responses: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            script.requests.append((self.path, dict(self.headers)))
            status, body, headers = script.responses.pop(0)
            data = json.dumps(body).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()


def target(url: str, **changes: Any) -> EndpointTarget:
    return EndpointTarget(base_url=url, model="m", backoff_initial_s=0.01, **changes)


def test_429_and_503_are_retried_honouring_retry_after(server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, script = server
    monkeypatch.setenv("WELIP_API_KEY", "wlp_secret")
    error = {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}
    script.responses = [(429, error, {"Retry-After": "0.2"}), (503, error, {}), (200, {"ok": 1}, {})]

    async def go() -> tuple[dict[str, Any], int]:
        endpoint = Endpoint(target(url))
        answer, _ = await endpoint.post("chat/completions", {})
        await endpoint.aclose()
        return answer, endpoint.retries

    started = time.perf_counter()
    answer, retries = asyncio.run(go())
    assert answer == {"ok": 1} and retries == 2
    assert time.perf_counter() - started >= 0.2  # waited as Retry-After asked
    assert all(h.get("Authorization") == "Bearer wlp_secret" for _, h in script.requests)


def test_a_400_fails_at_once_and_retries_are_bounded(server) -> None:
    url, script = server
    bad = {"error": {"message": "too long", "code": "context_length_exceeded"}}
    script.responses = [(400, bad, {})]

    async def post(cfg: EndpointTarget) -> None:
        endpoint = Endpoint(cfg)
        try:
            await endpoint.post("completions", {})
        finally:
            await endpoint.aclose()

    with pytest.raises(RequestFailed, match="context_length_exceeded"):
        asyncio.run(post(target(url)))
    assert len(script.requests) == 1
    script.responses = [(502, {}, {})] * 3
    with pytest.raises(RequestFailed, match="502"):
        asyncio.run(post(target(url, max_retries=2)))
    assert len(script.requests) == 4


def test_check_endpoint_fails_fast_and_says_why(server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, script = server
    monkeypatch.delenv("WELIP_API_KEY", raising=False)
    script.responses = [(401, {"error": {"message": "no key", "code": "invalid_api_key"}}, {})]
    with pytest.raises(EndpointUnavailable, match=r"refused the credentials \(is \$WELIP_API_KEY set\?\)"):
        check_endpoint(target(url))
    script.responses = [(200, {"data": [{"id": "other"}]}, {})]
    with pytest.raises(EndpointUnavailable, match="does not serve model 'm'"):
        check_endpoint(target(url))
    script.responses = [(200, {"data": [{"id": "m"}]}, {})]
    assert check_endpoint(target(url)) == ["m"]
    started = time.perf_counter()
    with pytest.raises(EndpointUnavailable, match="unreachable"):
        check_endpoint(target("http://127.0.0.1:9/v1", connect_timeout_s=1))
    assert time.perf_counter() - started < 5
