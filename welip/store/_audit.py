"""The audit log and the per-day usage totals kept beside it, in the metadata database.

A record's ``body`` (the request, kept only with ``audit.record_prompts``) is encrypted
with the configured keyring (:mod:`welip.store._crypto`) before it is written and
decrypted when it is read; the other columns are metadata, stored as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from welip.store._crypto import Keyring, keyring_from_env
from welip.store._database import Database, as_utc
from welip.store._schema import audit_log, usage_daily


class AuditStore:
    """The ``audit_log`` and ``usage_daily`` tables; usage grows in the transaction that writes audit."""

    def __init__(self, database: Database, *, keyring: Keyring | None = None) -> None:
        """Args:
        database: The metadata database.
        keyring: Seals bodies written and opens bodies read (``WELIP_ENCRYPTION_KEYS`` or
            ``WELIP_ENCRYPTION_KEYS_FILE`` by default; none set: bodies stay plaintext).

        Raises:
            ValueError: The configured keys are malformed.
        """
        self._engine = database.engine
        self._keyring = keyring if keyring is not None else keyring_from_env()

    def write_audit(self, records: Iterable[dict[str, Any]]) -> None:
        """Insert audit records and add them to ``usage_daily``, in one transaction.

        Records already stored (same id) are skipped and not counted again, so a
        replay that overlaps an earlier write changes nothing.
        """
        rows = [_audit_row(r) for r in records]
        if not rows:
            return
        if self._keyring.enabled:
            for row in rows:
                if row["body"] is not None:
                    row["body"] = self._keyring.encrypt(row["body"], _body_context(row["id"]))
        dialect = self._engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):  # pragma: no cover - only the two supported dialects
            raise RuntimeError(f"unsupported database dialect {dialect}")
        dml: Any = postgresql if dialect == "postgresql" else sqlite
        insert = dml.insert(audit_log).on_conflict_do_nothing(index_elements=["id"]).returning(audit_log.c.id)
        with self._engine.begin() as conn:
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
        """Audit records matching every given filter, newest first, bodies decrypted.

        Raises:
            DecryptionError: A body is encrypted under a key id not configured, or was altered.
        """
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
        with self._engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for row in rows:
            row["ts"] = as_utc(row["ts"]).isoformat()  # type: ignore[union-attr]
            if row["body"] is not None:
                row["body"] = self._keyring.decrypt(row["body"], _body_context(row["id"]))
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
        with self._engine.connect() as conn:
            return [
                {k: (int(v) if k in _COUNTS else v) for k, v in dict(r).items()}
                for r in conn.execute(query).mappings()
            ]

    def count_audit(self) -> int:
        """Number of audit records stored."""
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one())


_AUDIT_COLUMNS = frozenset(c.name for c in audit_log.columns)
_COUNTS = frozenset({"requests", "errors", "prompt_tokens", "completion_tokens"})


def _usage_totals(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[tuple[date, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["ts"].astimezone(UTC).date(), row["principal"] or "", row["model"] or "")
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
    # One order for every writer: concurrent transactions then lock the usage_daily rows they
    # share in the same order, and two gateway replicas cannot deadlock on them.
    return [totals[key] for key in sorted(totals)]


def _body_context(record_id: str) -> str:
    # Bound to the row: a body copied onto another record fails authentication.
    return f"audit_log.body:{record_id}"


def _audit_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {k: record.get(k) for k in _AUDIT_COLUMNS}
    ts = row["ts"]
    if isinstance(ts, str):  # records replayed from the spool carry ISO strings
        ts = datetime.fromisoformat(ts)
    row["ts"] = as_utc(ts)
    return row
