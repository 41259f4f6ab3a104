"""The audit log's filters, and the usage totals written beside it (PostgreSQL: tests/integration)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from welip.store import AuditStore, Database


def test_audit_filters_and_usage(database: Database) -> None:
    audit = AuditStore(database)
    now = datetime.now(UTC)
    base = {"principal_kind": "api_key", "method": "POST", "route": "/v1/chat/completions", "latency_ms": 1.0}
    rows = [
        {
            **base,
            "id": "a",
            "ts": now - timedelta(hours=2),
            "request_id": "1",
            "principal": "k1",
            "model": "m",
            "status": 200,
            "prompt_tokens": 3,
            "completion_tokens": 7,
        },
        {**base, "id": "b", "ts": now, "request_id": "2", "principal": "k1", "model": "m", "status": 429},
        {
            **base,
            "id": "c",
            "ts": now,
            "request_id": "3",
            "principal": "k2",
            "model": "m2",
            "status": 200,
            "prompt_tokens": 1,
            "completion_tokens": 1,
        },
    ]
    audit.write_audit(rows)
    audit.write_audit(rows)  # replays add nothing
    assert audit.count_audit() == 3
    assert [r["id"] for r in audit.query_audit(principal="k1")] == ["b", "a"]
    assert [r["id"] for r in audit.query_audit(status=429)] == ["b"]
    assert [r["id"] for r in audit.query_audit(since=now - timedelta(minutes=1), model="m2")] == ["c"]
    usage = {(u["principal"], u["model"]): u for u in audit.usage()}
    # The replay above counted nothing twice.
    assert (usage[("k1", "m")]["requests"], usage[("k1", "m")]["errors"]) == (2, 1)
    assert usage[("k1", "m")]["completion_tokens"] == 7 and usage[("k2", "m2")]["requests"] == 1
    assert audit.usage(since=(now + timedelta(days=1)).date()) == []
