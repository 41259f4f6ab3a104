"""The metadata database (PostgreSQL or SQLite): its engine, URL and migrations.

``WELIP_DATABASE_URL`` names it (``postgresql://...`` through psycopg 3); without it
WeLIP uses a SQLite file so a laptop runs with no server. Calls are synchronous
(SQLAlchemy Core); the gateway runs them in a worker thread, off its event loop.

Every PostgreSQL connection runs with a statement timeout
(``WELIP_DATABASE_STATEMENT_TIMEOUT_MS``, 5000 by default), so a slow database (locks,
load) fails a query within the bound as an unreachable one does: the audit writer
spools, a key look-up answers 503, instead of hanging. Migrations take longer bounds.

Each aggregate has its own store over one :class:`Database`: :class:`~welip.store.KeyStore`
(API keys), :class:`~welip.store.AuditStore` (audit log and usage),
:class:`~welip.store.EvalRunStore` (eval runs), :class:`~welip.store.CatalogStore`
(adapters and aliases), and the agents' ``AgentStore`` (threads and runs).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig

DEFAULT_DATABASE_URL = "sqlite:///~/.welip/welip.db"
STATEMENT_TIMEOUT_ENV = "WELIP_DATABASE_STATEMENT_TIMEOUT_MS"
DEFAULT_STATEMENT_TIMEOUT_MS = 5000
_MAX_STATEMENT_TIMEOUT_MS = 3_600_000
# Migrations may rewrite tables, and a replica waits for another's (the advisory lock).
MIGRATION_STATEMENT_TIMEOUT_MS = 600_000
_MIGRATIONS = Path(__file__).parent / "migrations"


def database_url_from_env() -> str:
    """``WELIP_DATABASE_URL``, or the embedded SQLite default."""
    return os.environ.get("WELIP_DATABASE_URL") or DEFAULT_DATABASE_URL


def statement_timeout_ms_from_env() -> int:
    """``WELIP_DATABASE_STATEMENT_TIMEOUT_MS`` (0: no timeout), or 5000."""
    raw = os.environ.get(STATEMENT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_STATEMENT_TIMEOUT_MS
    if not raw.isdigit() or int(raw) > _MAX_STATEMENT_TIMEOUT_MS:
        raise ValueError(
            f"{STATEMENT_TIMEOUT_ENV} must be milliseconds from 0 (no timeout) to "
            f"{_MAX_STATEMENT_TIMEOUT_MS}, not {raw!r}"
        )
    return int(raw)


def utcnow() -> datetime:
    """Now, in UTC (what every stored timestamp is)."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` marked UTC where the database gave it back naive (SQLite)."""
    # SQLite gives naive datetimes back; everything WeLIP stores is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _engine_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return url


@contextlib.contextmanager
def _migration_lock(connection: sa.Connection) -> Iterator[None]:
    # Replicas start together and each runs the migrations: one at a time.
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text(f"SET LOCAL statement_timeout = {MIGRATION_STATEMENT_TIMEOUT_MS}"))
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7041985)"))
        yield
        return
    database = connection.engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # Several replicas (processes) share the file: WAL lets readers run beside the
    # writer, busy_timeout waits for the lock instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """WeLIP's metadata database: one SQLAlchemy engine, and the migrations that shape it."""

    def __init__(
        self, url: str | None = None, *, connect_timeout_s: float = 5, statement_timeout_ms: int | None = None
    ) -> None:
        """Args:
        url: The database URL (``WELIP_DATABASE_URL`` by default).
        connect_timeout_s: Longest a PostgreSQL connection attempt waits.
        statement_timeout_ms: Longest a PostgreSQL statement runs, 0 for no bound
            (``WELIP_DATABASE_STATEMENT_TIMEOUT_MS`` by default, else 5000). A URL whose
            ``options`` set ``statement_timeout`` keeps its own.
        """
        self.url = url or database_url_from_env()
        engine_url = _engine_url(self.url)
        connect_args: dict[str, Any] = {}
        if engine_url.startswith("postgresql"):
            connect_args["connect_timeout"] = max(1, int(connect_timeout_s))
            if statement_timeout_ms is None:
                statement_timeout_ms = statement_timeout_ms_from_env()
            options = str(sa.engine.make_url(engine_url).query.get("options") or "")
            if "statement_timeout" not in options:
                connect_args["options"] = f"{options} -c statement_timeout={statement_timeout_ms}".strip()
        self.engine = sa.create_engine(
            engine_url, connect_args=connect_args, pool_pre_ping=True, pool_recycle=300
        )
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        config = AlembicConfig()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as connection, _migration_lock(connection):
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
