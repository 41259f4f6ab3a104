"""The metadata database (PostgreSQL or SQLite): its engine, URL and migrations.

``WELIP_DATABASE_URL`` names it; without it WeLIP uses a SQLite file so a laptop runs
with no server. PostgreSQL is reached through psycopg 3 with any connection string libpq
takes, the URI form (``postgresql://user@h1:5432,h2:5433/db?target_session_attrs=read-write``)
or the key-value form (``host=h1,h2 port=5432,5433 dbname=db user=u``): several hosts
and ``target_session_attrs=read-write`` let a client find the primary after a failover,
and ``sslmode=verify-full`` with ``sslrootcert=`` (or ``WELIP_DATABASE_CA_FILE``) checks
the server's certificate. Calls are synchronous (SQLAlchemy Core); the gateway runs them
in a worker thread, off its event loop.

After a failover, pooled connections to the old primary are found dead before use (pre-ping)
or on their first error, and the pool reconnects to whichever host is now read-write; a
statement that fails meanwhile raises, and callers treat that as an unreachable database
(the audit writer spools, a key look-up answers 503).

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

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_DATABASE_URL = "sqlite:///~/.welip/welip.db"
CA_FILE_ENV = "WELIP_DATABASE_CA_FILE"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
# Errors after which a pooled connection points at the wrong server or a dying one: the
# server became (or is) a standby, or it is shutting down. Dropped, not reused.
_STALE_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03"})
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


def postgres_conninfo(url: str) -> str | None:
    """The libpq connection string for a PostgreSQL ``url``; None for any other database.

    Args:
        url: A libpq URI (``postgresql://``, ``postgres://``, or SQLAlchemy's
            ``postgresql+psycopg://``), with one host or several
            (``h1:5432,h2:5433``), or a libpq key-value string (``host=h1,h2 port=5432,5433
            dbname=db``). ``WELIP_DATABASE_CA_FILE``, when set, becomes ``sslrootcert`` (and
            ``sslmode=verify-full``) unless the URL names its own; a verifying ``sslmode``
            gets ``ssl_min_protocol_version=TLSv1.3`` unless the URL names its own.

    Returns:
        A key-value connection string psycopg and libpq take as they are.

    Raises:
        ValueError: ``url`` is a PostgreSQL URL libpq would not take, or its hosts and
            ports do not pair up.
    """
    if url.startswith(_POSTGRES_SCHEMES):
        uri = "postgresql://" + url.split("://", 1)[1]
    elif "://" not in url and "=" in url:
        uri = url  # libpq's key-value form
    else:
        return None
    try:
        params = conninfo_to_dict(uri)
    except psycopg.ProgrammingError as exc:
        # libpq's message names the bad part; the URL itself may hold a password.
        raise ValueError(f"not a PostgreSQL connection string libpq accepts: {exc}") from None
    _host_ports(params)
    ca_file = os.environ.get(CA_FILE_ENV, "").strip()
    if ca_file:
        params.setdefault("sslrootcert", ca_file)
        params.setdefault("sslmode", "verify-full")
    if params.get("sslmode") in ("verify-ca", "verify-full"):
        # Where WeLIP verifies the server it also asks for TLS 1.3 (libpq's default floor is 1.2).
        params.setdefault("ssl_min_protocol_version", "TLSv1.3")
    return make_conninfo(**params)  # type: ignore[arg-type]


def _host_ports(params: dict[str, Any]) -> list[tuple[str, int | None]]:
    """The (host, port) pairs libpq will try, in order; ValueError where they do not pair up."""
    hosts = str(params.get("host") or params.get("hostaddr") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    if len(ports) not in (1, len(hosts)):
        raise ValueError(
            f"a PostgreSQL URL lists {len(hosts)} hosts and {len(ports)} ports; give one port for "
            "all of them or one per host"
        )
    for port in ports:
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"a PostgreSQL URL's port must be a number from 1 to 65535, not {port!r}")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return [(host, int(port) if port else None) for host, port in zip(hosts, ports, strict=True)]


def _dialect_url(params: dict[str, Any]) -> sa.URL:
    """SQLAlchemy's spelling of a libpq connection (several hosts go in ``host=`` query items)."""
    pairs = _host_ports(params)
    query: dict[str, Any] = {
        k: str(v) for k, v in params.items() if k not in ("user", "password", "dbname", "host", "port")
    }
    host: str | None
    host, port = pairs[0]
    if len(pairs) > 1:
        query["host"] = [h if p is None else f"{h}:{p}" for h, p in pairs]
        host, port = None, None
    return sa.URL.create(
        "postgresql+psycopg",
        username=params.get("user"),
        password=params.get("password"),
        host=host or None,
        port=port,
        database=params.get("dbname"),
        query=query,
    )


def sqlalchemy_database_url(url: str) -> str:
    """``url`` as SQLAlchemy's ``postgresql+psycopg`` dialect takes it (other URLs as given).

    For tools that take only SQLAlchemy URLs (MLflow's backend store): libpq's multi-host
    URI and key-value forms become SQLAlchemy's ``?host=h1:5432&host=h2:5433`` spelling,
    every other parameter kept. Raises ValueError as :func:`postgres_conninfo` does.
    """
    conninfo = postgres_conninfo(url)
    if conninfo is None:
        return url
    return _dialect_url(conninfo_to_dict(conninfo)).render_as_string(hide_password=False)


def _drop_stale_connection(context: sa.engine.ExceptionContext) -> None:
    # A connection to a server that turned standby (25006) or is shutting down (57P0x) fails
    # every write from now on, yet answers pre-ping's SELECT: treat it as disconnected so the
    # pool drops it, and every connection opened before it, and reconnects to the primary.
    sqlstate = getattr(context.original_exception, "sqlstate", None)
    if sqlstate in _STALE_SQLSTATES:
        context.is_disconnect = True


def _engine_url(url: str) -> str:
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
        url: The database URL (``WELIP_DATABASE_URL`` by default): ``sqlite:///path``, or
            a PostgreSQL connection string in either of libpq's forms (see
            :func:`postgres_conninfo`).
        connect_timeout_s: Longest a PostgreSQL connection attempt waits.
        statement_timeout_ms: Longest a PostgreSQL statement runs, 0 for no bound
            (``WELIP_DATABASE_STATEMENT_TIMEOUT_MS`` by default, else 5000). A URL whose
            ``options`` set ``statement_timeout`` keeps its own.

        Raises:
            ValueError: ``url`` is a PostgreSQL URL libpq would not take.
        """
        self.url = url or database_url_from_env()
        conninfo = postgres_conninfo(self.url)
        if conninfo is None:
            self.engine = sa.create_engine(_engine_url(self.url), pool_pre_ping=True, pool_recycle=300)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            return
        params = conninfo_to_dict(conninfo)
        overrides: dict[str, Any] = {"connect_timeout": max(1, int(connect_timeout_s))}
        if statement_timeout_ms is None:
            statement_timeout_ms = statement_timeout_ms_from_env()
        options = str(params.get("options") or "")
        if "statement_timeout" not in options:
            overrides["options"] = f"{options} -c statement_timeout={statement_timeout_ms}".strip()

        def connect() -> psycopg.Connection[Any]:
            # psycopg gets libpq's own string: every host, target_session_attrs, sslrootcert
            # and the rest, which SQLAlchemy's URL cannot carry in every form.
            return psycopg.connect(conninfo, **overrides)

        self.engine = sa.create_engine(
            _dialect_url(params), creator=connect, pool_pre_ping=True, pool_recycle=300
        )
        sa.event.listen(self.engine, "handle_error", _drop_stale_connection)

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        from alembic import command  # here: commands that migrate nothing start faster
        from alembic.config import Config as AlembicConfig

        config = AlembicConfig()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as connection, _migration_lock(connection):
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
