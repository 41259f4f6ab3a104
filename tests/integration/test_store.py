"""The data layer on the real servers: PostgreSQL migrations and queries, Redis token buckets."""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from redis.asyncio import Redis

from tests.integration.conftest import PG_ADMIN_URL, REDIS_URL
from welip.api import OpenAIError
from welip.store import AuditStore, Database, KeyStore, hash_key
from welip.store._schema import metadata
from welip.trust import AuditConfig, AuthConfig, Bucket, RedisRateLimiter
from welip.trust._audit import AuditRecord, AuditWriter
from welip.trust._auth import Authenticator

pytestmark = pytest.mark.integration


@pytest.fixture
def pg() -> Iterator[Database]:
    name = f"welip_store_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(f"postgresql://postgres@127.0.0.1:5432/{name}")
    yield db
    db.dispose()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate(url: str) -> None:
    Database(url).upgrade()


def test_postgresql_migrations_race_safely_and_match_the_schema(pg: Database) -> None:
    # Gateway replicas start together and each migrates: the advisory lock serialises them.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate, args=(pg.url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with pg.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_postgresql_keys_and_idempotent_audit(pg: Database) -> None:
    pg.upgrade()
    keys, audit = KeyStore(pg), AuditStore(pg)
    record, key = keys.create_key(name="ci", role="user", models=["m"], tpm=100)
    found = keys.key_by_hash(hash_key(key))
    assert found is not None and found.id == record.id and found.models == ["m"] and found.usable()
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"a{i}",
            "ts": now.isoformat(),
            "request_id": f"r{i}",
            "principal": record.id,
            "principal_kind": "api_key",
            "method": "POST",
            "route": "/v1/chat/completions",
            "model": "m",
            "status": 200,
            "latency_ms": 2.5,
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "guardrails": [{"direction": "output", "kind": "kr_rrn", "action": "redact", "count": 1}],
        }
        for i in range(5)
    ]
    audit.write_audit(rows[:3])
    audit.write_audit(rows)  # a replay overlapping what was written
    assert audit.count_audit() == 5
    (usage,) = audit.usage()
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (5, 15, 20)
    assert audit.query_audit(request_id="r2")[0]["guardrails"][0]["kind"] == "kr_rrn"


def test_concurrent_audit_writers_do_not_deadlock_on_usage_totals(pg: Database) -> None:
    """Two gateway replicas write audit batches at once, the same principals in opposite orders.

    Each transaction upserts one ``usage_daily`` row per (day, principal, model): in the order
    the records came, two writers locked those rows in opposite orders and PostgreSQL aborted
    one of them as a deadlock (seen in benchmarks/capacity.py with two writers).
    """
    pg.upgrade()
    audit = AuditStore(pg)
    principals = [f"k{i:02d}" for i in range(40)]
    batches, barrier = 15, threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(name: str, order: list[str]) -> None:
        try:
            for batch in range(batches):
                now = datetime.now(UTC)
                rows = [
                    {
                        "id": f"{name}-{batch}-{principal}",
                        "ts": now.isoformat(),
                        "request_id": f"{name}-{batch}-{principal}",
                        "principal": principal,
                        "principal_kind": "api_key",
                        "method": "POST",
                        "route": "/v1/chat/completions",
                        "model": "m",
                        "status": 200,
                        "latency_ms": 1.0,
                        "prompt_tokens": 1,
                        "completion_tokens": 1,
                    }
                    for principal in order
                ]
                barrier.wait(timeout=30)
                audit.write_audit(rows)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=writer, args=("a", principals)),
        threading.Thread(target=writer, args=("b", principals[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, repr(errors[0])
    assert audit.count_audit() == 2 * batches * len(principals)
    assert sum(row["requests"] for row in audit.usage()) == 2 * batches * len(principals)


def test_redis_buckets_admit_exactly_the_limit_under_concurrent_clients() -> None:
    prefix = f"welip-it-store-{secrets.token_hex(4)}"

    async def run() -> list[bool]:
        # Separate clients (connection pools), as separate gateway replicas have.
        clients = [Redis.from_url(REDIS_URL) for _ in range(4)]
        limiters = [RedisRateLimiter(c, prefix) for c in clients]
        buckets = [Bucket("requests", 10), Bucket("tokens", 10_000)]
        decisions = await asyncio.gather(*(limiters[i % 4].admit("k", buckets, [1, 7]) for i in range(60)))
        keys = [k async for k in clients[0].scan_iter(f"{prefix}:*")]
        if keys:
            await clients[0].delete(*keys)
        for c in clients:
            await c.aclose()
        return [d.allowed for d in decisions]

    allowed = asyncio.run(run())
    assert allowed.count(True) == 10


def _audit_record(i: int) -> AuditRecord:
    return AuditRecord(
        id=uuid.uuid4().hex,
        ts=datetime.now(UTC).isoformat(),
        request_id=f"slow-{i}",
        principal_kind="api_key",
        method="POST",
        route="/v1/chat/completions",
        status=200,
        latency_ms=1.0,
    )


def _until(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _outcome(call: Callable[[], object], timeout_s: float) -> object:
    """What ``call`` returns or raises in a thread, or "still running" after ``timeout_s`` (left behind)."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:  # noqa: BLE001 - the caller asserts on it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return out[0] if out else "still running"


def test_a_slow_database_fails_queries_within_the_statement_timeout(
    pg: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg.upgrade()
    monkeypatch.setenv("WELIP_DATABASE_STATEMENT_TIMEOUT_MS", "500")
    db = Database(pg.url)
    _, key = KeyStore(db).create_key(name="slow", role="user")
    authenticator = Authenticator(AuthConfig(enabled=True, key_cache_s=0), db)
    writer = AuditWriter(
        AuditStore(db).write_audit, AuditConfig(flush_interval_s=0.05, spool_dir=str(tmp_path))
    )
    # Another session holds the tables (a long migration, a stuck transaction): slow, not down.
    with psycopg.connect(pg.url) as blocker:
        blocker.execute("LOCK TABLE api_keys, audit_log IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        refused = _outcome(lambda: asyncio.run(authenticator.authenticate(f"Bearer {key}")), 10)
        assert isinstance(refused, OpenAIError), refused
        assert (refused.status_code, refused.code) == (503, "auth_unavailable")
        assert time.monotonic() - started < 3
        writer.submit(_audit_record(0))
        _until(lambda: writer.spooled() == 1, 5)  # spooled as during an outage
        blocker.rollback()
    writer.submit(_audit_record(1))
    _until(lambda: AuditStore(pg).count_audit() == 2, 10)  # the spool replayed once the lock went
    writer.close()
    assert asyncio.run(authenticator.authenticate(f"Bearer {key}")).role == "user"
    # Migrations are not bound by it: a replica waits for another's (the advisory lock) longer.
    with psycopg.connect(pg.url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(7041985)")
        threading.Timer(1.5, lambda: other.execute("SELECT pg_advisory_unlock(7041985)")).start()
        assert _outcome(db.upgrade, 30) is None
    db.dispose()
    monkeypatch.delenv("WELIP_DATABASE_STATEMENT_TIMEOUT_MS")
    with Database(pg.url).engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "5s"  # the default
