"""Serve replica logs: JSON lines; a request's line carries its trace id; no key, no prompt."""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from tests.integration.conftest import ADMIN_KEY, AGENTS_APP, APP_NAME, MODEL

pytestmark = pytest.mark.integration

HEX = re.compile(r"[0-9a-f]+")
WAIT_S = 20
ACCESS_LOGGER = "welip.gateway.access"


def replica_logs() -> list[Path]:
    """The log files of the session's replicas (both apps), as Serve names them."""
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    serve_dir = session / "logs" / "serve"
    return sorted(p for app in (APP_NAME, AGENTS_APP) for p in serve_dir.glob(f"replica_{app}_*.log"))


def read_lines() -> tuple[list[dict[str, Any]], list[str], str]:
    """Every replica log line parsed, those that are not JSON, and the files' whole text."""
    parsed: list[dict[str, Any]] = []
    bad: list[str] = []
    texts = []
    for path in replica_logs():
        text = path.read_text(errors="replace")
        texts.append(text)
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                bad.append(f"{path.name}:{number}: {line[:200]}")
    return parsed, bad, "\n".join(texts)


def test_request_line_is_json_with_the_trace_id_and_no_secrets(http: httpx.Client) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    request_id = f"it-logs-{secrets.token_hex(6)}"
    prompt = f"Repeat this code word back to me: log-check-{secrets.token_hex(6)}"
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "x-request-id": request_id},
    )
    assert response.status_code == 200, response.text

    # The line is written when the answer has been sent: wait for it to reach the file.
    deadline = time.monotonic() + WAIT_S
    while True:
        lines, bad, text = read_lines()
        access = [x for x in lines if x.get("name") == ACCESS_LOGGER and x.get("request_id") == request_id]
        if access or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    assert replica_logs(), "no replica log files under the session's logs/serve/"
    assert bad == [], "replica log lines that are not JSON"
    assert len(access) == 1, f"one {ACCESS_LOGGER} line per request, found {len(access)}"
    (line,) = access
    assert line.get("trace_id") == trace_id, "the access line does not carry the request's trace id"
    assert len(line["span_id"]) == 16 and HEX.fullmatch(line["span_id"])
    assert line["principal"] == "admin-key"
    assert line["model"] == MODEL
    assert line["status"] == 200
    assert line["levelname"] == "INFO" and line["latency_ms"] > 0
    assert {"asctime", "message", "deployment", "replica"} <= line.keys()
    # Nothing in any replica's log holds the key or the prompt (content capture is off).
    assert ADMIN_KEY not in text
    assert prompt not in text
