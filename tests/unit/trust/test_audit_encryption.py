"""Recorded prompts at rest: encrypted in the audit table and in the spool, readable by an admin."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.unit.trust.test_audit import FlakyDatabase, _until
from welip.store import AuditStore, Database, DecryptionError, Keyring
from welip.trust import AuditConfig
from welip.trust._audit import AuditRecord, AuditWriter

SECRET = "my RRN is 900101-1234567"


def _record(i: int) -> AuditRecord:
    return AuditRecord(
        id=uuid.uuid4().hex,
        ts=datetime.now(UTC).isoformat(),
        request_id=f"req-{i}",
        principal="key_alice",
        principal_kind="api_key",
        method="POST",
        route="/v1/chat/completions",
        status=200,
        latency_ms=1.0,
        body=f'{{"model": "m", "messages": [{{"role": "user", "content": "{SECRET} #{i}"}}]}}',
    )


def _raw_bodies(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT body FROM audit_log")]


def test_spooled_and_stored_bodies_hold_no_prompt_and_read_back_after_rotation(tmp_path: Path) -> None:
    k1, k1_entry = Keyring.generate("k1")
    database = Database(f"sqlite:///{tmp_path}/w.db")
    database.upgrade()
    flaky = FlakyDatabase(AuditStore(database, keyring=k1))
    flaky.down = True
    spool = tmp_path / "spool"
    config = AuditConfig(flush_interval_s=0.02, spool_dir=str(spool), record_prompts=True)
    writer = AuditWriter(flaky.write, config, keyring=k1)
    for i in range(5):
        writer.submit(_record(i))
    _until(lambda: writer.spooled() == 5)
    lines = (spool / f"audit-{os.getpid()}.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(line.startswith("wlpenc:v1:k1:") for line in lines)
    assert not any("900101" in line or "key_alice" in line for line in lines)
    flaky.down = False
    writer.submit(_record(5))  # a write that succeeds starts the replay
    _until(lambda: flaky.db.count_audit() == 6)
    writer.close()
    bodies = _raw_bodies(tmp_path / "w.db")
    assert len(bodies) == 6 and all(b.startswith("wlpenc:v1:k1:") and "900101" not in b for b in bodies)

    # k2 becomes current; k1 stays to read what was written under it.
    k2, k2_entry = Keyring.generate("k2")
    rotated = AuditStore(database, keyring=Keyring.parse(f"{k2_entry},{k1_entry}"))
    rotated.write_audit([_record(6).row()])
    assert sum(b.startswith("wlpenc:v1:k2:") for b in _raw_bodies(tmp_path / "w.db")) == 1
    rows = rotated.query_audit(limit=10)
    assert [SECRET in r["body"] for r in rows] == [True] * 7
    assert {r["request_id"] for r in rows} == {f"req-{i}" for i in range(7)}
    # Retiring k1 while its rows are kept: the admin is told which key is missing.
    with pytest.raises(DecryptionError, match="key id 'k1'"):
        AuditStore(database, keyring=k2).query_audit(limit=10)


def test_a_spool_under_a_missing_key_is_kept_until_the_key_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    k1, k1_entry = Keyring.generate("k1")
    database = Database(f"sqlite:///{tmp_path}/w.db")
    database.upgrade()
    spool = tmp_path / "spool"
    spool.mkdir()
    dead = spool / "audit-999999999.jsonl"  # a replica that died with records spooled under k1
    sealed = [k1.encrypt(json.dumps(_record(i).row()), "audit.spool") for i in range(3)]
    plain_before = json.dumps(_record(3).row())  # spooled before encryption was on
    dead.write_text("".join(line + "\n" for line in [plain_before, *sealed]) + sealed[0][:40])
    config = AuditConfig(flush_interval_s=0.02, spool_dir=str(spool), record_prompts=True)
    k2, k2_entry = Keyring.generate("k2")
    writer = AuditWriter(AuditStore(database, keyring=k2).write_audit, config, keyring=k2)
    writer.submit(_record(9))  # the database answers: replay is tried, and fails on k1
    _until(lambda: AuditStore(database, keyring=k2).count_audit() >= 1)
    writer.close()
    assert dead.exists() and AuditStore(database, keyring=k2).count_audit() == 1
    assert "encrypted under key id 'k1', which is not configured" in caplog.text
    both = Keyring.parse(f"{k2_entry},{k1_entry}")  # k1 is configured again
    writer = AuditWriter(AuditStore(database, keyring=both).write_audit, config, keyring=both)
    _until(lambda: not dead.exists())
    writer.close()
    # The plaintext line, the three sealed ones; the torn last line is skipped.
    store = AuditStore(database, keyring=both)
    assert store.count_audit() == 5
    assert all(SECRET in r["body"] for r in store.query_audit(limit=10))
