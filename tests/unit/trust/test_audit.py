"""The audit writer: off the request path, spooled while the database is down, replayed once."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from welip.store import AuditStore, Database
from welip.trust import AuditConfig
from welip.trust._audit import AuditRecord, AuditWriter


def _record(i: int) -> AuditRecord:
    return AuditRecord(
        id=uuid.uuid4().hex,
        ts=datetime.now(UTC).isoformat(),
        request_id=f"req-{i}",
        principal_kind="api_key",
        method="POST",
        route="/v1/chat/completions",
        status=200,
        latency_ms=1.0,
    )


class FlakyDatabase:
    def __init__(self, db: AuditStore) -> None:
        self.db = db
        self.down = False

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.down:
            raise ConnectionError("database is down")
        self.db.write_audit(records)


def _until(predicate: Any, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_records_written_while_the_database_is_down_arrive_once(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/w.db")
    database.upgrade()
    db = AuditStore(database)
    flaky = FlakyDatabase(db)
    writer = AuditWriter(
        flaky.write, AuditConfig(flush_interval_s=0.02, batch_size=7, spool_dir=str(tmp_path))
    )
    for i in range(20):
        writer.submit(_record(i))
    _until(lambda: db.count_audit() == 20)
    flaky.down = True
    for i in range(20, 70):
        writer.submit(_record(i))
    _until(lambda: writer.pending() == 0 and not writer.database_up)
    spooled = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("audit-*.jsonl"))
    assert spooled == 50 and db.count_audit() == 20
    assert writer.spooled() == 50  # what the welip_audit_spool_depth gauge reports
    flaky.down = False
    writer.submit(_record(70))
    _until(lambda: db.count_audit() == 71)
    _until(lambda: writer.spooled() == 0)
    writer.close()
    ids = {r["request_id"] for r in db.query_audit(limit=1000)}
    assert ids == {f"req-{i}" for i in range(71)}
    assert all(p.stat().st_size == 0 for p in tmp_path.glob("audit-*.jsonl"))


def test_spool_left_by_a_dead_replica_is_replayed_without_duplicates(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/w.db")
    database.upgrade()
    db = AuditStore(database)
    records = [_record(i) for i in range(10)]
    # The dead replica had written some before it spooled them again.
    db.write_audit([r.row() for r in records[:4]])
    dead = tmp_path / "audit-999999999.jsonl"
    dead.write_text("".join(json.dumps(r.row()) + "\n" for r in records) + '{"torn": ')
    writer = AuditWriter(db.write_audit, AuditConfig(flush_interval_s=0.02, spool_dir=str(tmp_path)))
    _until(lambda: not dead.exists())
    writer.close()
    assert db.count_audit() == 10
    assert sorted(r["request_id"] for r in db.query_audit()) == sorted(r.request_id for r in records)


def test_close_writes_what_is_still_queued(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/w.db")
    database.upgrade()
    db = AuditStore(database)
    writer = AuditWriter(db.write_audit, AuditConfig(flush_interval_s=30, spool_dir=str(tmp_path)))
    for i in range(5):
        writer.submit(_record(i))
    writer.close()
    assert db.count_audit() == 5


def _spool_bytes(spool_dir: Path) -> int:
    return sum(p.stat().st_size for p in spool_dir.glob("audit-*.jsonl"))


def test_a_full_spool_keeps_records_in_memory_and_a_full_queue_refuses_new_promises(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/w.db")
    database.upgrade()
    db = AuditStore(database)
    flaky = FlakyDatabase(db)
    flaky.down = True
    spool_dir = tmp_path / "spool"
    config = AuditConfig(
        flush_interval_s=0.02,
        batch_size=2,
        spool_dir=str(spool_dir),
        max_queue_records=8,
        max_spool_bytes=4096,
    )
    writer = AuditWriter(flaky.write, config)
    admitted: list[AuditRecord] = []
    # Each admitted request is promised room for its record, until none is left (refused
    # over many flushes in a row, so a writer that merely lags does not end it early).
    refusals = 0
    while refusals < 25:
        if not writer.reserve():
            refusals += 1
            time.sleep(0.02)
            continue
        refusals = 0
        record = _record(len(admitted))
        writer.submit(record, reserved=True)
        admitted.append(record)
        assert len(admitted) < 1000, "the queue bound never refused"
        time.sleep(0.01)
    assert 0 < _spool_bytes(spool_dir) <= 4096  # the spool stopped at its bound
    assert writer.pending() == 8  # the rest wait in memory, none lost
    assert writer.spool_bytes() == _spool_bytes(spool_dir)  # what the welip_audit_spool_bytes gauge says
    # A record nobody was promised (a refused request's) is dropped, and counted, when there is no room.
    assert not writer.submit(_record(9999))
    assert writer.dropped() == 1
    flaky.down = False
    _until(lambda: db.count_audit() == len(admitted))
    _until(lambda: writer.pending() == 0 and _spool_bytes(spool_dir) == 0)
    assert writer.reserve()  # room again
    writer.release()
    writer.close()
    assert sorted(r["request_id"] for r in db.query_audit(limit=1000)) == sorted(
        r.request_id for r in admitted
    )
