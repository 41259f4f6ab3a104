"""Backups of the single-node metadata database: SQLite or one plain PostgreSQL.

A backup is one file, written to a local path or to the object store (``s3://...``
through :func:`~welip.store.filesystem`, so ``WELIP_S3_ENDPOINT_URL`` and
``WELIP_S3_CA_BUNDLE`` apply):

* SQLite: a consistent copy made with SQLite's online backup API while WeLIP keeps
  writing (WAL included).
* PostgreSQL: ``pg_dump --format=custom`` of the whole database, so LangGraph's
  checkpoint tables (they live beside WeLIP's own) come along; restored with
  ``pg_restore`` in one transaction.

A restore goes into a fresh, empty database and refuses one holding tables unless
``force`` is set; afterwards the schema is migrated to head, so a backup from an older
WeLIP works with this one. A PostgreSQL cluster run by an operator (CloudNativePG) is
backed up by the operator instead (the chart's ``ScheduledBackup``).
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess  # nosec B404: pg_dump and pg_restore, with argument lists
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from welip.store._database import Database, database_url_from_env
from welip.store._storage import filesystem

_SQLITE_MAGIC = b"SQLite format 3\x00"
_PG_DUMP_MAGIC = b"PGDMP"
# libpq waits this long for a server that does not answer, so a wrong host fails fast.
_CONNECT_TIMEOUT_S = 10
_TOOL_DIRS = "/usr/lib/postgresql/*/bin"


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class BackupInfo:
    """What a backup or restore did.

    Attributes:
        location: The backup file (local path or ``s3://`` URL).
        dialect: ``sqlite`` or ``postgresql``.
        size_bytes: Size of the backup file.
        duration_s: Wall time the operation took.
    """

    location: str
    dialect: str
    size_bytes: int
    duration_s: float


def backup_database(location: str, url: str | None = None, *, timeout_s: float = 3600) -> BackupInfo:
    """Write a backup of the database at ``url`` to ``location``.

    Args:
        location: Local file path or ``s3://bucket/key``; an existing file is replaced.
        url: Database URL (``WELIP_DATABASE_URL`` by default).
        timeout_s: Longest ``pg_dump`` may run.

    Returns:
        Where the backup went and how large it is.

    Raises:
        BackupError: The database is unreachable, or ``pg_dump`` is missing or fails.
    """
    url = url or database_url_from_env()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="welip-backup-") as tmp:
        local = Path(tmp) / "backup"
        dialect = _dialect(url)
        if dialect == "sqlite":
            _sqlite_backup(_sqlite_path(url), local)
        else:
            _run_tool(
                "pg_dump",
                ["--format=custom", "--no-owner", "--no-privileges", f"--file={local}"],
                url,
                timeout_s,
            )
        size = local.stat().st_size
        _upload(local, location)
    return BackupInfo(location, dialect, size, time.monotonic() - start)


def restore_database(
    location: str, url: str | None = None, *, force: bool = False, timeout_s: float = 3600
) -> BackupInfo:
    """Restore the backup at ``location`` into the database at ``url``, then migrate it to head.

    Args:
        location: A file :func:`backup_database` wrote (local path or ``s3://`` URL).
        url: Database URL (``WELIP_DATABASE_URL`` by default). A PostgreSQL database must
            exist (``createdb``); a SQLite file is created.
        force: Restore into a database that already holds tables: SQLite's is replaced
            whole; in PostgreSQL the backup's tables are dropped and recreated
            (``pg_restore --clean``), other tables are left alone.
        timeout_s: Longest ``pg_restore`` may run.

    Returns:
        What was restored.

    Raises:
        BackupError: The backup is missing or not of this database's kind, the
            database is not empty (without ``force``), or ``pg_restore`` fails.
    """
    url = url or database_url_from_env()
    dialect = _dialect(url)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="welip-restore-") as tmp:
        local = Path(tmp) / "backup"
        _download(location, local)
        _check_kind(local, dialect, location)
        if dialect == "sqlite":
            target = _sqlite_path(url)
            if not force and _sqlite_tables(target):
                raise BackupError(f"{target} already holds tables; restore into a new file or pass --force")
            _sqlite_restore(local, target)
        else:
            if not force and _postgres_tables(url):
                raise BackupError(
                    "the database already holds tables; restore into a new one (createdb) or pass --force"
                )
            options = ["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
            if force:
                options += ["--clean", "--if-exists"]
            _run_tool("pg_restore", [*options, str(local)], url, timeout_s)
        size = local.stat().st_size
    database = Database(url)
    try:
        database.upgrade()
    finally:
        database.dispose()
    return BackupInfo(location, dialect, size, time.monotonic() - start)


def _dialect(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return "postgresql"
    if "=" in url and "://" not in url:
        return "postgresql"  # libpq's key-value form: host=... dbname=...
    raise BackupError(f"backups cover SQLite and PostgreSQL, not {url.split(':', 1)[0]!r}")


def _sqlite_path(url: str) -> Path:
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:":
        raise BackupError("an in-memory SQLite database has nothing to back up or restore into")
    return Path(path).expanduser()


def _sqlite_backup(source: Path, target: Path) -> None:
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}")
    # uri mode=ro: a backup never creates or changes the source.
    with (
        closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)) as src,
        closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def _sqlite_tables(path: Path) -> list[str]:
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return [r[0] for r in rows]


def _sqlite_restore(backup: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # The backup API writes through SQLite's own locking and journal: a replaced file's
    # WAL and readers stay consistent, which copying the file over would not give.
    with (
        closing(sqlite3.connect(f"file:{backup}?mode=ro", uri=True)) as src,
        closing(sqlite3.connect(target, timeout=30)) as dst,
    ):
        src.backup(dst)


def _check_kind(local: Path, dialect: str, location: str) -> None:
    with open(local, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    kind = "sqlite" if head == _SQLITE_MAGIC else "postgresql" if head.startswith(_PG_DUMP_MAGIC) else None
    if kind is None:
        raise BackupError(f"{location} is not a WeLIP backup (neither a SQLite file nor a pg_dump archive)")
    if kind != dialect:
        raise BackupError(f"{location} is a {kind} backup; it cannot be restored into {dialect}")


def _postgres_conninfo(url: str) -> tuple[str, dict[str, str]]:
    """``url`` as a libpq connection string for the tools, and the environment they run with.

    The password goes through ``PGPASSWORD`` rather than the command line (which other
    users of the host can read in the process list).
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from welip.store._database import postgres_conninfo

    try:
        # Either of libpq's forms, several hosts, and WELIP_DATABASE_CA_FILE (verify-full)
        # as every other WeLIP connection takes them.
        conninfo = postgres_conninfo(url)
    except ValueError as exc:
        raise BackupError(str(exc)) from None
    if conninfo is None:
        raise BackupError("not a PostgreSQL URL")
    params = conninfo_to_dict(conninfo)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    params.setdefault("connect_timeout", str(_CONNECT_TIMEOUT_S))
    return make_conninfo(**{k: str(v) for k, v in params.items()}), env


def _postgres_tables(url: str) -> list[str]:
    import psycopg

    conninfo, env = _postgres_conninfo(url)
    try:
        with psycopg.connect(conninfo, password=env.get("PGPASSWORD")) as conn:
            rows = conn.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
                " AND n.nspname NOT LIKE 'pg\\_toast%'"
            ).fetchall()
    except psycopg.OperationalError as exc:
        raise BackupError(f"cannot connect to the database: {str(exc).strip()}") from None
    return [r[0] for r in rows]


def find_tool(name: str) -> str:
    """The path of PostgreSQL's ``name`` (pg_dump, pg_restore): on PATH, else the newest Debian one.

    Raises:
        BackupError: Neither place has it.
    """
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"{_TOOL_DIRS}/{name}"), key=lambda p: int(Path(p).parts[-3].split(".")[0]), reverse=True
    )
    if candidates:
        return candidates[0]
    raise BackupError(
        f"{name} not found on PATH or in {_TOOL_DIRS}; install PostgreSQL's client tools"
        " (Debian: apt-get install postgresql-client), at least the server's major version"
    )


def _run_tool(name: str, args: list[str], url: str, timeout_s: float) -> None:
    tool = find_tool(name)
    conninfo, env = _postgres_conninfo(url)
    try:
        done = subprocess.run(  # nosec B603: fixed tool, argument list, no shell
            [tool, f"--dbname={conninfo}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{name} did not finish within {timeout_s:g}s") from None
    if done.returncode != 0:
        raise BackupError(f"{name} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def _upload(local: Path, location: str) -> None:
    fs, path = filesystem(location)
    if not location.startswith("s3://"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.put_file(str(local), path)
    except OSError as exc:
        raise BackupError(f"cannot write the backup to {location}: {exc}") from None


def _download(location: str, local: Path) -> None:
    fs, path = filesystem(location)
    try:
        fs.get_file(path, str(local))
    except FileNotFoundError:
        raise BackupError(f"no backup at {location}") from None
    except OSError as exc:
        raise BackupError(f"cannot read the backup at {location}: {exc}") from None
