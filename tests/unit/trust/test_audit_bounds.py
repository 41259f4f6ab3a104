"""The audit's bounds as a caller sees them: a request the audit cannot hold is refused, not served
unaudited; unauthenticated refusals are audited a few per minute per address.

Over the gateway app with fake engines and an embedded SQLite store (helpers from ``test_trust``).
"""
# The fixtures db, env and rsa_key are test_trust's, imported: their parameters redefine them.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.unit.gateway.test_app import FakeEngine
from tests.unit.trust.test_trust import (  # noqa: F401 - fixtures
    ADMIN_KEY,
    CHAT,
    _answer,
    _bearer,
    _client,
    _wait_for_audit,
    db,
    env,
    rsa_key,
)
from welip.store import AuditStore, Database
from welip.trust import AuditConfig
from welip.trust._telemetry import rejection_reason


def test_a_request_the_audit_cannot_hold_is_refused_with_503_and_every_served_one_has_its_row(
    env: None, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = True
    real_write = AuditStore.write_audit

    def write(self: AuditStore, records: Any) -> None:
        if down:
            raise ConnectionError("database is down")
        real_write(self, records)

    monkeypatch.setattr(AuditStore, "write_audit", write)
    engine = FakeEngine([_answer("4")])
    client, trust = _client(
        db, tmp_path, {"m": engine}, audit={"max_queue_records": 5, "max_spool_bytes": 4096, "batch_size": 2}
    )
    served: list[str] = []
    refused = None
    for i in range(200):
        response = client.post(
            "/v1/chat/completions", json=CHAT, headers={**_bearer(ADMIN_KEY), "X-Request-Id": f"req-{i}"}
        )
        if response.status_code == 503:
            refused = response
            break
        assert response.status_code == 200, response.text
        served.append(f"req-{i}")
        time.sleep(0.06)  # a flush: the record goes to the spool while it has room
    assert refused is not None, "the audit's bounds never refused a request"
    assert served  # served while the spool had room
    body = refused.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == ("server_error", "audit_unavailable")
    assert int(refused.headers["retry-after"]) >= 1
    assert rejection_reason(503, "audit_unavailable") == "backpressure"
    assert len(engine.calls) == len(served)  # the refused request never reached the engine
    assert trust.audit is not None and trust.audit.pending() <= 5
    down = False
    # Every request that was served has exactly one row once the database answers.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = AuditStore(db).query_audit(limit=1000)
        if {r["request_id"] for r in rows} >= set(served):
            break
        time.sleep(0.05)
    ok = [r["request_id"] for r in rows if r["status"] == 200]
    assert sorted(ok) == sorted(served)
    assert len({r["id"] for r in rows}) == len(rows)
    assert client.post("/v1/chat/completions", json=CHAT, headers=_bearer(ADMIN_KEY)).status_code == 200


def test_unauthenticated_refusals_are_audited_at_most_n_per_minute_per_address(
    env: None, db: Database, tmp_path: Path
) -> None:
    client, trust = _client(
        db, tmp_path, {"m": FakeEngine([_answer("4")])}, audit={"max_unauthenticated_records_per_minute": 3}
    )

    async def flood(address: str) -> list[int]:
        transport = httpx.ASGITransport(app=client.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return [
                (
                    await http.post("/v1/chat/completions", json=CHAT, headers=_bearer(f"wlp_guess-{i}"))
                ).status_code
                for i in range(20)
            ]

    assert asyncio.run(flood("10.0.0.1")) == [401] * 20
    assert asyncio.run(flood("10.0.0.2")) == [401] * 20
    assert client.post("/v1/chat/completions", json=CHAT, headers=_bearer(ADMIN_KEY)).status_code == 200
    rows = _wait_for_audit(db, 7)
    time.sleep(0.3)
    rows = AuditStore(db).query_audit(limit=1000)
    assert sorted(r["status"] for r in rows) == [200] + [401] * 6  # 3 per address, then only counted
    assert trust.audit is not None and trust.audit.dropped() == 34
    assert AuditConfig().max_unauthenticated_records_per_minute == 10
