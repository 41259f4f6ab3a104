"""The data layer on the real servers: PostgreSQL migrations and queries, Redis token buckets."""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from redis.asyncio import Redis

from tests.integration.conftest import PG_ADMIN_URL, REDIS_URL
from welip.store import AuditStore, Database, KeyStore, hash_key
from welip.store._schema import metadata
from welip.trust import Bucket, RedisRateLimiter

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
