"""The embedded SQLite store: migrations, keys, audit queries (PostgreSQL: tests/integration)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from welip.store import Database, EvalRunRecord, hash_key
from welip.store._schema import adapters, eval_runs, metadata, model_aliases


def test_migrations_build_exactly_the_declared_schema(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/w.db")
    db.upgrade()
    db.upgrade()  # idempotent
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_default_url_is_a_sqlite_file_under_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WELIP_DATABASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    db = Database()
    db.upgrade()
    assert (tmp_path / ".welip" / "welip.db").is_file()
    assert db.engine.dialect.name == "sqlite"


def test_keys_are_stored_only_as_hashes_and_expire(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/w.db")
    db.upgrade()
    record, key = db.create_key(name="ci", role="user", models=["m"], rpm=5)
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    db.create_key(name="old", role="user", expires_at=past)
    with db.engine.connect() as conn:
        dump = repr(conn.execute(sa.text("select * from api_keys")).fetchall())
    assert key not in dump and key[12:] not in dump
    found = db.key_by_hash(hash_key(key))
    assert found is not None and found.usable() and found.models == ["m"] and found.rpm == 5
    assert not db.key_by_hash(hash_key(db.create_key(name="x", role="user", expires_at=past)[1])).usable()
    assert db.revoke_key(record.id) and not db.revoke_key(record.id)
    assert [k.name for k in db.list_keys()] == ["x", "old"]
    assert {k.name for k in db.list_keys(include_revoked=True)} == {"ci", "old", "x"}


def test_audit_filters_and_usage(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/w.db")
    db.upgrade()
    now = datetime.now(timezone.utc)
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
    db.write_audit(rows)
    db.write_audit(rows)  # replays add nothing
    assert db.count_audit() == 3
    assert [r["id"] for r in db.query_audit(principal="k1")] == ["b", "a"]
    assert [r["id"] for r in db.query_audit(status=429)] == ["b"]
    assert [r["id"] for r in db.query_audit(since=now - timedelta(minutes=1), model="m2")] == ["c"]
    usage = {(u["principal"], u["model"]): u for u in db.usage()}
    # The replay above counted nothing twice.
    assert (usage[("k1", "m")]["requests"], usage[("k1", "m")]["errors"]) == (2, 1)
    assert usage[("k1", "m")]["completion_tokens"] == 7 and usage[("k2", "m2")]["requests"] == 1
    assert db.usage(since=(now + timedelta(days=1)).date()) == []


def test_migration_0002_counts_audit_rows_written_before_it(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from welip.store._database import _MIGRATIONS

    db = Database(f"sqlite:///{tmp_path}/w.db")
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(
            sa.text(
                "insert into audit_log (id, ts, request_id, principal, principal_kind, method, route, model, "
                "status, latency_ms, prompt_tokens, completion_tokens) values "
                "('x', '2026-11-01 10:00:00', 'r', 'k1', 'api_key', 'POST', '/v1/completions', 'm', "
                "200, 1, 3, 4)"
            )
        )
    db.upgrade()
    (row,) = db.usage()
    assert (row["principal"], row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        "k1",
        1,
        3,
        4,
    )


def test_eval_runs_are_recorded_and_listed_newest_first(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/w.db")
    db.upgrade()
    base: dict[str, Any] = {
        "model": "m",
        "target_kind": "endpoint",
        "status": "finished",
        "seed": 1,
        "rows": 3,
        "scored": 2,
        "errors": 0,
        "malformed": 1,
        "results_url": "s3://b/eval",
    }
    older = datetime.now(timezone.utc) - timedelta(minutes=5)
    db.record_eval_run(EvalRunRecord(**base, id="r1", task="a", metrics={"em": 0.5}, created_at=older))
    db.record_eval_run(EvalRunRecord(**base, id="r2", task="b", metrics={"em": None}, mlflow_run_id="ml"))
    assert [r.id for r in db.list_eval_runs()] == ["r2", "r1"]
    assert [r.id for r in db.list_eval_runs(task="a")] == ["r1"]
    run = db.get_eval_run("r1")
    assert run is not None and run.metrics == {"em": 0.5} and run.malformed == 1
    assert db.get_eval_run("nope") is None
    public = run.public()
    assert list(public) == [c.name for c in eval_runs.columns]
    assert public["created_at"] == older.isoformat() and public["template_sha256"] is None


def test_adapters_and_aliases_come_back_as_records_with_their_json_view(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/w.db")
    db.upgrade()
    spec: dict[str, Any] = dict(base_model_id="m", uri="/a", kind="sft", mlflow_run_id=None)
    first = db.register_adapter(name="faq", version=None, lineage={"commit": "c"}, **spec)
    second = db.register_adapter(name="faq", version=None, lineage={}, **spec)
    assert (first.id, first.version, second.id) == ("faq-v1", 1, "faq-v2")
    assert db.get_adapter("faq-v1") == first and db.get_adapter("faq-v3") is None
    assert [a.id for a in db.list_adapters(name="faq")] == ["faq-v2", "faq-v1"]
    public = first.public()
    assert list(public) == [c.name for c in adapters.columns]
    assert public["lineage"] == {"commit": "c"} and public["created_at"] == first.created_at.isoformat()

    db.set_alias("prod", "faq-v1")
    switched = db.set_alias("prod", "faq-v2", updated_by="me", decision={"gate": "g"}, expect="faq-v1")
    assert (switched.target, switched.previous, switched.decision) == ("faq-v2", "faq-v1", {"gate": "g"})
    assert db.get_alias("prod") == switched and db.get_alias("nope") is None
    assert [a.alias for a in db.list_aliases()] == ["prod"]
    assert list(switched.public()) == [c.name for c in model_aliases.columns]
    assert switched.public()["updated_at"] == switched.updated_at.isoformat()
