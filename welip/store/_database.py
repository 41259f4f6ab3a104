"""The metadata database: API keys, the audit log and eval runs, on PostgreSQL or SQLite.

``WELIP_DATABASE_URL`` names it (``postgresql://...`` through psycopg 3); without it
WeLIP uses a SQLite file so a laptop runs with no server. Calls are synchronous
(SQLAlchemy Core); the gateway runs them in a worker thread, off its event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.dialects import postgresql, sqlite

from welip.store._schema import adapters, api_keys, audit_log, eval_runs, model_aliases, usage_daily

DEFAULT_DATABASE_URL = "sqlite:///~/.welip/welip.db"
KEY_PREFIX = "wlp_"
_MIGRATIONS = Path(__file__).parent / "migrations"


def database_url_from_env() -> str:
    """``WELIP_DATABASE_URL``, or the embedded SQLite default."""
    return os.environ.get("WELIP_DATABASE_URL") or DEFAULT_DATABASE_URL


def hash_key(key: str) -> str:
    """The stored form of an API key.

    Keys carry 256 random bits, so a fast hash is enough: nobody brute-forces that
    space, and auth stays off the slow-hash path on every request.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def utcnow() -> datetime:
    """Now, in UTC (what every stored timestamp is)."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` marked UTC where the database gave it back naive (SQLite)."""
    # SQLite gives naive datetimes back; everything WeLIP stores is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored (never the key itself)."""

    id: str
    name: str
    key_prefix: str
    role: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    token_budget: int | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime | None = None) -> bool:
        """Neither revoked nor expired."""
        now = now or utcnow()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def public(self) -> dict[str, Any]:
        """JSON-ready view for lists and the admin API."""
        return {
            "id": self.id,
            "name": self.name,
            "key_prefix": self.key_prefix,
            "role": self.role,
            "models": self.models,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "token_budget": self.token_budget,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True, kw_only=True)
class EvalRunRecord:
    """One evaluation job's run: a row of ``eval_runs`` (per-sample results live at ``results_url``)."""

    id: str
    created_at: datetime = field(default_factory=utcnow)
    task: str
    model: str
    target_kind: str
    """``endpoint`` or ``batch``."""
    status: str
    """``finished`` or ``failed``."""
    dataset_sha256: str | None = None
    template_sha256: str | None = None
    engine_version: str | None = None
    seed: int
    rows: int
    scored: int
    errors: int
    """Samples whose request failed for good."""
    malformed: int
    metrics: dict[str, float | None]
    """Metric name -> mean over the scored samples."""
    results_url: str
    mlflow_run_id: str | None = None
    error: str | None = None
    """Why a failed run failed."""

    def public(self) -> dict[str, Any]:
        """JSON-ready view (columns in table order, time as ISO text)."""
        return {**asdict(self), "created_at": self.created_at.isoformat()}


@dataclass(frozen=True, kw_only=True)
class AdapterRecord:
    """A registered LoRA adapter version: a row of ``adapters``."""

    id: str
    """The model id clients send: ``<name>-v<version>``."""
    name: str
    version: int
    base_model_id: str
    uri: str
    """The adapter's folder: a local path or an ``s3://`` URL."""
    kind: str
    """``sft`` or ``grpo``."""
    mlflow_run_id: str | None
    lineage: dict[str, Any]
    """Base model, dataset and config hashes, commit, MLflow model version (free-form JSON)."""
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """JSON-ready view (columns in table order, time as ISO text)."""
        return {**asdict(self), "created_at": self.created_at.isoformat()}


@dataclass(frozen=True, kw_only=True)
class AliasRecord:
    """A name the gateway routes to another model: a row of ``model_aliases``."""

    alias: str
    target: str
    """A served model id or an adapter id."""
    previous: str | None
    """The target before the last switch."""
    updated_at: datetime
    updated_by: str | None
    decision: dict[str, Any] | None
    """The promotion gate that allowed the switch, as recorded (JSON), if any."""

    def public(self) -> dict[str, Any]:
        """JSON-ready view (columns in table order, time as ISO text)."""
        return {**asdict(self), "updated_at": self.updated_at.isoformat()}


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
    """WeLIP's metadata store."""

    def __init__(self, url: str | None = None, *, connect_timeout_s: float = 5) -> None:
        self.url = url or database_url_from_env()
        engine_url = _engine_url(self.url)
        connect_args: dict[str, Any] = {}
        if engine_url.startswith("postgresql"):
            connect_args["connect_timeout"] = max(1, int(connect_timeout_s))
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

    # -- API keys -----------------------------------------------------------------

    def create_key(
        self,
        *,
        name: str,
        role: str,
        models: Sequence[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        token_budget: int | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[KeyRecord, str]:
        """Mint a key; returns its record and the key, which is never stored or shown again."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {
            "id": "key_" + secrets.token_hex(8),
            "name": name,
            "key_hash": hash_key(key),
            "key_prefix": key[: len(KEY_PREFIX) + 6],
            "role": role,
            "models": list(models) if models is not None else None,
            "rpm": rpm,
            "tpm": tpm,
            "token_budget": token_budget,
            "created_at": utcnow(),
            "expires_at": expires_at,
            "revoked_at": None,
        }
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(**row))
        return _key_record(row), key

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key with this hash, usable or not."""
        with self.engine.connect() as conn:
            row = conn.execute(api_keys.select().where(api_keys.c.key_hash == key_hash)).mappings().first()
        return _key_record(dict(row)) if row else None

    def list_keys(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        """All keys, newest first."""
        query = api_keys.select().order_by(api_keys.c.created_at.desc())
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [_key_record(dict(r)) for r in conn.execute(query).mappings()]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False if no usable key has this id."""
        with self.engine.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return bool(result.rowcount)

    # -- audit --------------------------------------------------------------------

    def write_audit(self, records: Iterable[dict[str, Any]]) -> None:
        """Insert audit records and add them to ``usage_daily``, in one transaction.

        Records already stored (same id) are skipped and not counted again, so a
        replay that overlaps an earlier write changes nothing.
        """
        rows = [_audit_row(r) for r in records]
        if not rows:
            return
        dialect = self.engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):  # pragma: no cover - only the two supported dialects
            raise RuntimeError(f"unsupported database dialect {dialect}")
        dml: Any = postgresql if dialect == "postgresql" else sqlite
        insert = dml.insert(audit_log).on_conflict_do_nothing(index_elements=["id"]).returning(audit_log.c.id)
        with self.engine.begin() as conn:
            inserted = {row[0] for row in conn.execute(insert, rows)}
            totals = _usage_totals(r for r in rows if r["id"] in inserted)
            if totals:
                upsert = dml.insert(usage_daily)
                upsert = upsert.on_conflict_do_update(
                    index_elements=["day", "principal", "model"],
                    set_={
                        name: getattr(usage_daily.c, name) + getattr(upsert.excluded, name)
                        for name in ("requests", "errors", "prompt_tokens", "completion_tokens")
                    },
                )
                conn.execute(upsert, totals)

    def query_audit(
        self,
        *,
        principal: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Audit records matching every given filter, newest first."""
        query = audit_log.select().order_by(audit_log.c.ts.desc()).limit(limit)
        for column, value in (
            (audit_log.c.principal, principal),
            (audit_log.c.key_id, key_id),
            (audit_log.c.model, model),
            (audit_log.c.status, status),
            (audit_log.c.request_id, request_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(audit_log.c.ts >= since)
        if until is not None:
            query = query.where(audit_log.c.ts < until)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for row in rows:
            row["ts"] = as_utc(row["ts"]).isoformat()  # type: ignore[union-attr]
        return rows

    def usage(self, *, since: date | None = None, until: date | None = None) -> list[dict[str, Any]]:
        """Requests, errors and tokens per principal and model, summed over UTC days [since, until)."""
        c = usage_daily.c
        query = sa.select(
            c.principal,
            sa.func.max(c.key_id).label("key_id"),
            c.model,
            sa.func.sum(c.requests).label("requests"),
            sa.func.sum(c.errors).label("errors"),
            sa.func.sum(c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(c.completion_tokens).label("completion_tokens"),
        ).group_by(c.principal, c.model)
        if since is not None:
            query = query.where(c.day >= since)
        if until is not None:
            query = query.where(c.day < until)
        with self.engine.connect() as conn:
            return [
                {k: (int(v) if k in _COUNTS else v) for k, v in dict(r).items()}
                for r in conn.execute(query).mappings()
            ]

    def count_audit(self) -> int:
        """Number of audit records stored."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one())

    # -- evaluation runs -----------------------------------------------------------

    def record_eval_run(self, run: EvalRunRecord) -> None:
        """Insert one ``eval_runs`` row."""
        with self.engine.begin() as conn:
            conn.execute(eval_runs.insert().values(**asdict(run)))

    def get_eval_run(self, run_id: str) -> EvalRunRecord | None:
        """The eval run with this id, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(eval_runs.select().where(eval_runs.c.id == run_id)).mappings().first()
        return _eval_run_record(row) if row is not None else None

    def list_eval_runs(
        self, *, task: str | None = None, model: str | None = None, limit: int = 50
    ) -> list[EvalRunRecord]:
        """Eval runs, newest first, optionally of one task or model."""
        query = eval_runs.select().order_by(eval_runs.c.created_at.desc()).limit(limit)
        if task is not None:
            query = query.where(eval_runs.c.task == task)
        if model is not None:
            query = query.where(eval_runs.c.model == model)
        with self.engine.connect() as conn:
            return [_eval_run_record(r) for r in conn.execute(query).mappings()]

    # -- adapters and aliases --------------------------------------------------------

    def register_adapter(
        self,
        *,
        name: str,
        version: int | None,
        base_model_id: str,
        uri: str,
        kind: str,
        mlflow_run_id: str | None,
        lineage: dict[str, Any],
    ) -> AdapterRecord:
        """Add an adapter version; ``version`` None takes the next free one. Returns its record."""
        with self.engine.begin() as conn:
            if version is None:
                latest = conn.execute(
                    sa.select(sa.func.max(adapters.c.version)).where(adapters.c.name == name)
                ).scalar_one()
                version = int(latest or 0) + 1
            row = {
                "id": f"{name}-v{version}",
                "name": name,
                "version": version,
                "base_model_id": base_model_id,
                "uri": uri,
                "kind": kind,
                "mlflow_run_id": mlflow_run_id,
                "lineage": lineage,
                "created_at": utcnow(),
            }
            conn.execute(adapters.insert().values(**row))
        return _adapter_record(row)

    def get_adapter(self, adapter_id: str) -> AdapterRecord | None:
        """The adapter with this model id (``<name>-v<version>``), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(adapters.select().where(adapters.c.id == adapter_id)).mappings().first()
        return _adapter_record(row) if row is not None else None

    def list_adapters(self, *, name: str | None = None) -> list[AdapterRecord]:
        """Adapters, newest first, optionally of one name."""
        query = adapters.select().order_by(adapters.c.created_at.desc(), adapters.c.version.desc())
        if name is not None:
            query = query.where(adapters.c.name == name)
        with self.engine.connect() as conn:
            return [_adapter_record(r) for r in conn.execute(query).mappings()]

    def set_alias(
        self,
        alias: str,
        target: str,
        *,
        updated_by: str | None = None,
        decision: dict[str, Any] | None = None,
        expect: str | None = None,
    ) -> AliasRecord:
        """Point ``alias`` at ``target``; returns its record.

        ``expect``: the target the caller saw; if another switch happened since, nothing
        changes and ``ValueError`` is raised (two promotions never overwrite each other
        unseen).
        """
        with self.engine.begin() as conn:
            current = (
                conn.execute(model_aliases.select().where(model_aliases.c.alias == alias).with_for_update())
                .mappings()
                .first()
            )
            previous = current["target"] if current is not None else None
            if expect is not None and previous != expect:
                raise ValueError(f"alias {alias} points at {previous}, not {expect}: switched meanwhile")
            row = {
                "alias": alias,
                "target": target,
                "previous": previous,
                "updated_at": utcnow(),
                "updated_by": updated_by,
                "decision": decision,
            }
            if current is None:
                conn.execute(model_aliases.insert().values(**row))
            else:
                conn.execute(model_aliases.update().where(model_aliases.c.alias == alias).values(**row))
        return _alias_record(row)

    def get_alias(self, alias: str) -> AliasRecord | None:
        """The alias, or None."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(model_aliases.select().where(model_aliases.c.alias == alias)).mappings().first()
            )
        return _alias_record(row) if row is not None else None

    def list_aliases(self) -> list[AliasRecord]:
        """Every alias, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(model_aliases.select().order_by(model_aliases.c.alias)).mappings()
            return [_alias_record(r) for r in rows]


def _eval_run_record(row: Mapping[Any, Any]) -> EvalRunRecord:
    return EvalRunRecord(**{**row, "created_at": as_utc(row["created_at"])})


def _adapter_record(row: Mapping[Any, Any]) -> AdapterRecord:
    return AdapterRecord(**{**row, "created_at": as_utc(row["created_at"])})


def _alias_record(row: Mapping[Any, Any]) -> AliasRecord:
    return AliasRecord(**{**row, "updated_at": as_utc(row["updated_at"])})


def _key_record(row: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        key_prefix=row["key_prefix"],
        role=row["role"],
        models=row["models"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        token_budget=row["token_budget"],
        created_at=as_utc(row["created_at"]),  # type: ignore[arg-type]
        expires_at=as_utc(row["expires_at"]),
        revoked_at=as_utc(row["revoked_at"]),
    )


_AUDIT_COLUMNS = frozenset(c.name for c in audit_log.columns)
_COUNTS = frozenset({"requests", "errors", "prompt_tokens", "completion_tokens"})


def _usage_totals(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[tuple[date, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["ts"].astimezone(timezone.utc).date(), row["principal"] or "", row["model"] or "")
        entry = totals.setdefault(
            key,
            {
                "day": key[0],
                "principal": key[1],
                "model": key[2],
                "key_id": row["key_id"],
                "requests": 0,
                "errors": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            },
        )
        entry["requests"] += 1
        entry["errors"] += int(row["status"] >= 400)
        entry["prompt_tokens"] += row["prompt_tokens"] or 0
        entry["completion_tokens"] += row["completion_tokens"] or 0
    return list(totals.values())


def _audit_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {k: record.get(k) for k in _AUDIT_COLUMNS}
    ts = row["ts"]
    if isinstance(ts, str):  # records replayed from the spool carry ISO strings
        ts = datetime.fromisoformat(ts)
    row["ts"] = as_utc(ts)
    return row
