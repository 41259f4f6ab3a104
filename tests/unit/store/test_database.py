"""The embedded SQLite database: its default file and migrations; PostgreSQL URLs in libpq's
forms (connections to real servers: tests/integration)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from psycopg.conninfo import conninfo_to_dict

from welip.store import AuditStore, Database, mlflow_uri, postgres_conninfo, sqlalchemy_database_url
from welip.store._database import _drop_stale_connection
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


MULTI_HOST_URI = "postgresql://welip:s3cret@db-1:5432,db-2:5433/welip?target_session_attrs=read-write"
MULTI_HOST_KEY_VALUE = "host=db-1,db-2 port=5432,5433 dbname=welip user=welip target_session_attrs=read-write"


@pytest.mark.parametrize("url", [MULTI_HOST_URI, MULTI_HOST_KEY_VALUE])
def test_both_libpq_forms_with_several_hosts_reach_psycopg_whole(url: str) -> None:
    params = conninfo_to_dict(postgres_conninfo(url) or "")
    assert (params["host"], params["port"], params["dbname"], params["user"]) == (
        "db-1,db-2",
        "5432,5433",
        "welip",
        "welip",
    )
    assert params["target_session_attrs"] == "read-write"
    # SQLAlchemy's parser rejected the URI form ("db-1:5432,db-2:5433" is no port); the
    # engine is made without connecting and names every host.
    db = Database(url)
    assert db.engine.dialect.name == "postgresql"
    shown = db.engine.url.render_as_string(hide_password=True)
    assert "db-1%3A5432" in shown and "db-2%3A5433" in shown and "s3cret" not in shown


def test_sqlalchemy_spelling_for_mlflow_keeps_every_host_and_option(monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlalchemy_database_url(MULTI_HOST_URI)
    parsed = sa.make_url(url)
    assert (parsed.drivername, parsed.username, parsed.password, parsed.database) == (
        "postgresql+psycopg",
        "welip",
        "s3cret",
        "welip",
    )
    assert parsed.query == {"host": ("db-1:5432", "db-2:5433"), "target_session_attrs": "read-write"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MULTI_HOST_KEY_VALUE)
    assert sa.make_url(mlflow_uri()).query["host"] == ("db-1:5432", "db-2:5433")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert mlflow_uri() == "http://mlflow:5000"


@pytest.mark.parametrize("url", ["sqlite:///x.db", "mysql://h/db", "http://h", "/path/to/welip.db"])
def test_other_urls_are_not_taken_for_postgresql(url: str) -> None:
    assert postgres_conninfo(url) is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://welip:s3cret@h1/db?colour=blue", 'invalid URI query parameter: "colour"'),
        ("host=h1 colour=blue password=s3cret", 'invalid connection option "colour"'),
        ("host=h1,h2,h3 port=5432,5433 password=s3cret", "lists 3 hosts and 2 ports"),
        ("postgresql://welip:s3cret@h1:5432,h2:http/db", "not 'http'"),
        ("host=h1 port=70000 password=s3cret", "not '70000'"),
    ],
)
def test_a_bad_postgresql_url_is_a_clear_error_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match="PostgreSQL") as raised:
        Database(url)
    assert says in str(raised.value) and "s3cret" not in str(raised.value)


def test_ca_file_from_the_environment_turns_on_verify_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELIP_DATABASE_CA_FILE", "/etc/welip/db-ca/ca.crt")
    params = conninfo_to_dict(postgres_conninfo(MULTI_HOST_URI) or "")
    assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", "/etc/welip/db-ca/ca.crt")
    # The URL's own choices stand.
    own = conninfo_to_dict(postgres_conninfo(MULTI_HOST_URI + "&sslmode=verify-ca&sslrootcert=/ca.pem") or "")
    assert (own["sslmode"], own["sslrootcert"]) == ("verify-ca", "/ca.pem")
    # Verifying, WeLIP asks for TLS 1.3 unless the URL names its own floor.
    assert params["ssl_min_protocol_version"] == own["ssl_min_protocol_version"] == "TLSv1.3"
    floor = conninfo_to_dict(postgres_conninfo(MULTI_HOST_URI + "&ssl_min_protocol_version=TLSv1.2") or "")
    assert floor["ssl_min_protocol_version"] == "TLSv1.2"


@pytest.mark.parametrize(("sqlstate", "dropped"), [("25006", True), ("57P01", True), ("23505", False)])
def test_a_connection_to_a_standby_or_a_dying_server_is_dropped_from_the_pool(
    sqlstate: str, dropped: bool
) -> None:
    # A promoted standby's old primary, restarted as a standby, still answers pre-ping's
    # SELECT 1; its read-only errors must drop the connection, or every write fails until
    # pool_recycle. A unique violation is the caller's business.
    context = SimpleNamespace(original_exception=SimpleNamespace(sqlstate=sqlstate), is_disconnect=False)
    _drop_stale_connection(context)  # type: ignore[arg-type]
    assert context.is_disconnect is dropped
