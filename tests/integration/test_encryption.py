"""Encryption at rest on the real PostgreSQL: audit rows, the audit spool, agent checkpoints.

No Ray and none of the package's session fixtures: a database of their own per test.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph
from typer.testing import CliRunner

from tests.integration.conftest import PG_ADMIN_URL
from tests.unit.trust.test_audit_encryption import SECRET, _record
from welip.agents._app import open_checkpointer
from welip.cli import app
from welip.store import AuditStore, Database, Keyring
from welip.trust import AuditConfig
from welip.trust._audit import AuditWriter

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"welip_crypto_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    monkeypatch.setenv("WELIP_DATABASE_URL", url)
    monkeypatch.delenv("WELIP_ENCRYPTION_KEYS_FILE", raising=False)
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _until(predicate: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Outage:
    """The audit writer's database, switched off and on by the test."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self.down = False

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        self.store.write_audit(records)


def test_audit_rows_and_spool_hold_no_prompt_and_read_back_through_the_cli(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, k1 = Keyring.generate("k1")
    monkeypatch.setenv("WELIP_ENCRYPTION_KEYS", k1)
    db = Database(pg_url)
    db.upgrade()
    outage = Outage(AuditStore(db))  # the keys from the environment, as the gateway takes them
    spool = tmp_path / "spool"
    config = AuditConfig(flush_interval_s=0.02, spool_dir=str(spool), record_prompts=True)
    writer = AuditWriter(outage.write, config)
    outage.down = True
    for i in range(4):
        writer.submit(_record(i))
    _until(lambda: writer.spooled() == 4)
    lines = (spool / f"audit-{os.getpid()}.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(
        line.startswith("wlpenc:v1:k1:") and "900101" not in line for line in lines
    )
    outage.down = False
    writer.submit(_record(4))
    _until(lambda: outage.store.count_audit() == 5)
    writer.close()

    # k2 becomes current; rows under k1 stay as they are.
    _, k2 = Keyring.generate("k2")
    monkeypatch.setenv("WELIP_ENCRYPTION_KEYS", f"{k2},{k1}")
    AuditStore(db).write_audit([_record(5).row()])
    with psycopg.connect(pg_url) as conn:
        raw = [row[0] for row in conn.execute("SELECT body FROM audit_log")]
    assert len(raw) == 6 and not any("900101" in body for body in raw)
    assert sorted(body.split(":")[2] for body in raw) == ["k1"] * 5 + ["k2"]

    out = CliRunner().invoke(app, ["audit", "query", "--principal", "key_alice"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["request_id"] for r in rows) == [f"req-{i}" for i in range(6)]
    assert all(SECRET in json.loads(r["body"])["messages"][0]["content"] for r in rows)

    monkeypatch.setenv("WELIP_ENCRYPTION_KEYS", k2)  # k1 retired too early
    out = CliRunner().invoke(app, ["audit", "query"])
    assert out.exit_code != 0 and "key id 'k1'" in str(out.exception)
    db.dispose()


def test_an_encrypted_checkpoint_reads_back_after_rotation(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reply(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"you said: {state['messages'][-1].content}")]}

    graph = StateGraph(MessagesState).add_node("reply", reply).add_edge(START, "reply")
    config = {"configurable": {"thread_id": "t1"}}

    async def turn(text: str) -> list[Any]:
        async with open_checkpointer(pg_url) as saver:
            out = await graph.compile(checkpointer=saver).ainvoke({"messages": [HumanMessage(text)]}, config)
        return [m.content for m in out["messages"]]

    _, k1 = Keyring.generate("k1")
    monkeypatch.setenv("WELIP_ENCRYPTION_KEYS", k1)
    assert asyncio.run(turn(SECRET)) == [SECRET, f"you said: {SECRET}"]
    with psycopg.connect(pg_url) as conn:
        blobs = conn.execute("SELECT type, blob FROM checkpoint_blobs WHERE blob IS NOT NULL").fetchall()
        writes = conn.execute("SELECT type, blob FROM checkpoint_writes").fetchall()
    assert blobs and writes
    assert all(t.endswith("+wlpenc:v1:k1") and b"900101" not in bytes(b) for t, b in [*blobs, *writes])

    _, k2 = Keyring.generate("k2")
    monkeypatch.setenv("WELIP_ENCRYPTION_KEYS", f"{k2},{k1}")
    assert asyncio.run(turn("again")) == [SECRET, f"you said: {SECRET}", "again", "you said: again"]
    with psycopg.connect(pg_url) as conn:
        types = {row[0] for row in conn.execute("SELECT type FROM checkpoint_blobs WHERE blob IS NOT NULL")}
    assert any(t.endswith("+wlpenc:v1:k2") for t in types)
