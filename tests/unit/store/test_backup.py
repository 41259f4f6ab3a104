"""`welip db backup` / `welip db restore`: every key, audit row and agent thread comes back.

SQLite (a file per test), the PostgreSQL on 127.0.0.1:5432 (a database per test, dropped
after) and the object store (moto's S3 behind HTTPS with a CA the test makes).
"""

from __future__ import annotations

import operator
import os
import secrets
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from typer.testing import CliRunner

from welip.cli import app
from welip.store import (
    AuditStore,
    BackupError,
    Database,
    KeyStore,
    agent_threads,
    backup_database,
    filesystem,
    hash_key,
    restore_database,
)

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
THREAD_KEY = "owner-key_1/thread-1"


class _State(TypedDict):
    messages: Annotated[list[str], operator.add]


def _graph(saver: Any) -> Any:
    builder = StateGraph(_State)
    builder.add_node("answer", lambda state: {"messages": [f"answer to {state['messages'][-1]}"]})
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return builder.compile(checkpointer=saver)


def _saver(url: str) -> AbstractContextManager[Any]:
    # The agents' checkpointer keeps its tables in WeLIP's database (welip.agents.open_checkpointer).
    if url.startswith("sqlite:///"):
        return SqliteSaver.from_conn_string(url.removeprefix("sqlite:///"))
    return PostgresSaver.from_conn_string(url)


def _populate(url: str) -> dict[str, Any]:
    """Keys, audit rows and an agent thread (its row and LangGraph checkpoints) in ``url``."""
    db = Database(url)
    db.upgrade()
    keys = KeyStore(db)
    _, active = keys.create_key(name="ci", role="user", rpm=5)
    revoked_record, revoked = keys.create_key(name="old", role="admin")
    keys.revoke_key(revoked_record.id)
    now = datetime.now(UTC)
    base = {"principal_kind": "api_key", "method": "POST", "route": "/v1/chat/completions", "latency_ms": 1.0}
    audit = [
        {**base, "id": f"a{i}", "ts": now - timedelta(minutes=i), "request_id": f"r{i}", "status": 200}
        for i in range(5)
    ]
    AuditStore(db).write_audit(audit)
    with db.engine.begin() as conn:
        conn.execute(
            agent_threads.insert().values(
                thread_key=THREAD_KEY,
                thread_id="thread-1",
                owner="key_1",
                assistant_id="chat",
                status="idle",
                thread_metadata={"topic": "backups"},
                created_at=now,
                updated_at=now,
            )
        )
    db.dispose()
    with _saver(url) as saver:
        saver.setup()
        _graph(saver).invoke({"messages": ["hello"]}, {"configurable": {"thread_id": THREAD_KEY}})
    return {"keys": [active, revoked], "audit_ids": sorted(r["id"] for r in audit)}


def _assert_restored(url: str, expected: dict[str, Any]) -> None:
    db = Database(url)
    keys = KeyStore(db)
    found = [keys.key_by_hash(hash_key(key)) for key in expected["keys"]]
    assert [k is not None for k in found] == [True, True]
    assert found[0] is not None and found[0].usable() and found[0].rpm == 5
    assert found[1] is not None and found[1].revoked_at is not None  # still revoked
    rows = AuditStore(db).query_audit(limit=100)
    assert sorted(r["id"] for r in rows) == expected["audit_ids"]
    with db.engine.connect() as conn:
        thread = conn.execute(sa.select(agent_threads)).mappings().one()
    assert (thread["thread_key"], thread["thread_metadata"]) == (THREAD_KEY, {"topic": "backups"})
    db.dispose()
    with _saver(url) as saver:
        state = _graph(saver).get_state({"configurable": {"thread_id": THREAD_KEY}})
    assert state.values == {"messages": ["hello", "answer to hello"]}


def test_sqlite_backup_and_restore_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = f"sqlite:///{tmp_path}/live.db"
    expected = _populate(source)
    runner = CliRunner()
    monkeypatch.setenv("WELIP_DATABASE_URL", source)
    backup = tmp_path / "backups" / "welip.sqlite"
    result = runner.invoke(app, ["db", "backup", str(backup)])
    assert result.exit_code == 0, result.output
    assert f"to {backup}" in result.output

    target = f"sqlite:///{tmp_path}/fresh/restored.db"
    monkeypatch.setenv("WELIP_DATABASE_URL", target)
    result = runner.invoke(app, ["db", "restore", str(backup)])
    assert result.exit_code == 0, result.output
    _assert_restored(target, expected)

    # A second restore would overwrite what is there now: refused unless forced.
    again = runner.invoke(app, ["db", "restore", str(backup)])
    assert again.exit_code == 1
    assert "already holds tables" in again.output and "--force" in again.output
    forced = runner.invoke(app, ["db", "restore", "--force", str(backup)])
    assert forced.exit_code == 0, forced.output
    _assert_restored(target, expected)


def test_restore_refuses_a_missing_or_foreign_backup_clearly(tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path}/t.db"
    with pytest.raises(BackupError, match="no backup at"):
        restore_database(str(tmp_path / "nope"), target)
    junk = tmp_path / "junk"
    junk.write_bytes(b"PGDMP" + b"\0" * 64)
    with pytest.raises(BackupError, match="is a postgresql backup; it cannot be restored into sqlite"):
        restore_database(str(junk), target)
    junk.write_text("hello")
    with pytest.raises(BackupError, match="not a WeLIP backup"):
        restore_database(str(junk), target)
    with pytest.raises(BackupError, match="no SQLite database at"):
        backup_database(str(tmp_path / "b"), f"sqlite:///{tmp_path}/absent.db")


@pytest.fixture
def pg_database() -> Iterator[Callable[[], str]]:
    """Makes fresh PostgreSQL databases on 127.0.0.1:5432; drops them all after the test."""
    names: list[str] = []

    def make() -> str:
        name = f"welip_backup_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            pass
    except psycopg.OperationalError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 (make services)")
    yield make
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgresql_backup_and_restore_into_a_fresh_database(
    pg_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = pg_database()
    expected = _populate(source)
    runner = CliRunner()
    monkeypatch.setenv("WELIP_DATABASE_URL", source)
    backup = tmp_path / "welip.dump"
    result = runner.invoke(app, ["db", "backup", str(backup)])
    assert result.exit_code == 0, result.output
    assert backup.read_bytes().startswith(b"PGDMP")

    target = pg_database()
    monkeypatch.setenv("WELIP_DATABASE_URL", target)
    result = runner.invoke(app, ["db", "restore", str(backup)])
    assert result.exit_code == 0, result.output
    _assert_restored(target, expected)

    refused = runner.invoke(app, ["db", "restore", str(backup)])
    assert refused.exit_code == 1 and "already holds tables" in refused.output
    # --force replaces the backup's tables: a key created since the backup is gone again.
    db = Database(target)
    _, later = KeyStore(db).create_key(name="later", role="user")
    db.dispose()
    forced = runner.invoke(app, ["db", "restore", "--force", str(backup)])
    assert forced.exit_code == 0, forced.output
    _assert_restored(target, expected)
    db = Database(target)
    assert KeyStore(db).key_by_hash(hash_key(later)) is None
    db.dispose()


def test_postgresql_errors_are_clear_and_quick(pg_database: Callable[[], str], tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="pg_dump failed"):
        backup_database(str(tmp_path / "x"), "postgresql://postgres@127.0.0.1:5432/welip_no_such_db")
    sqlite_backup = tmp_path / "s.sqlite"
    _populate(f"sqlite:///{tmp_path}/s.db")
    backup_database(str(sqlite_backup), f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(BackupError, match="is a sqlite backup; it cannot be restored into postgresql"):
        restore_database(str(sqlite_backup), pg_database())


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed: (ca.pem, server.pem, server.key)."""
    now = datetime.now(UTC)

    def cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_pem, server_pem, key_pem = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    pem = serialization.Encoding.PEM
    ca_pem.write_bytes(cert("welip-test-ca", ca_key, "welip-test-ca", ca_key, True).public_bytes(pem))
    server_pem.write_bytes(cert("127.0.0.1", server_key, "welip-test-ca", ca_key, False).public_bytes(pem))
    key_pem.write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_pem, server_pem, key_pem


@pytest.fixture
def https_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """moto's S3 app served over HTTPS (TLS 1.3 only) with a certificate from a test CA; the CA's path."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    ca, cert, key = _tls_files(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    server = make_server(
        "127.0.0.1",
        0,
        DomainDispatcherApplication(create_backend_app),
        threaded=True,
        request_handler=MotoRequestHandler,
        ssl_context=context,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "WELIP_S3_ENDPOINT_URL": f"https://127.0.0.1:{server.server_port}",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore would retry the refused handshake
    yield ca
    server.shutdown()
    thread.join()


def test_backup_round_trip_through_s3_over_https_with_a_custom_ca(
    https_s3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = f"sqlite:///{tmp_path}/live.db"
    expected = _populate(source)
    location = "s3://welip-backups/nightly/welip.sqlite"

    # Without the CA, the endpoint's certificate is not trusted: no byte goes out.
    with pytest.raises(BackupError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        backup_database(location, source)

    monkeypatch.setenv("WELIP_S3_CA_BUNDLE", str(https_s3))
    fs, _ = filesystem(location)
    fs.mkdir("welip-backups")
    info = backup_database(location, source)
    assert info.size_bytes > 0 and fs.size("welip-backups/nightly/welip.sqlite") == info.size_bytes

    target = f"sqlite:///{tmp_path}/restored.db"
    restore_database(location, target)
    _assert_restored(target, expected)

    monkeypatch.setenv("WELIP_S3_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(FileNotFoundError, match=r"WELIP_S3_CA_BUNDLE=.*missing\.pem is not a file"):
        filesystem(location)
