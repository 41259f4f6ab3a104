"""The embedded SQLite database: its default file and migrations (PostgreSQL: tests/integration)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from welip.store import AuditStore, Database
from welip.store._schema import metadata


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
    (row,) = AuditStore(db).usage()
    assert (row["principal"], row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        "k1",
        1,
        3,
        4,
    )


def test_migration_0006_keeps_threads_made_before_it_under_their_id(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from welip.agents import AgentStore
    from welip.store._database import _MIGRATIONS

    db = Database(f"sqlite:///{tmp_path}/w.db")
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0005")
        conn.execute(
            sa.text(
                "insert into agent_threads (thread_id, owner, status, thread_metadata, created_at, "
                "updated_at) values ('t1', 'alice', 'idle', '{}', '2026-11-01 10:00:00', "
                "'2026-11-01 10:00:00')"
            )
        )
        conn.execute(
            sa.text(
                "insert into agent_runs (run_id, thread_id, assistant_id, owner, status, multitask_strategy, "
                "kwargs, run_metadata, created_at, updated_at) values ('r1', 't1', 'docs', 'alice', "
                "'success', 'reject', '{}', '{}', '2026-11-01 10:00:00', '2026-11-01 10:00:00')"
            )
        )
    db.upgrade()
    store = AgentStore(db)
    thread = store.get_thread("t1", "alice")
    # Its checkpoints were written under "t1": the key stays that.
    assert thread is not None and thread.thread_key == "t1"
    (run,) = store.list_runs("t1", "alice", 10, 0)
    assert (run.run_id, run.thread_key) == ("r1", "t1")
    bobs = store.create_thread("t1", "bob", {})
    assert bobs is not None and bobs.thread_key not in ("t1", thread.thread_key)
    assert store.create_thread("t1", "alice", {}) is None
