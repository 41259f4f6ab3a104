"""Batches (``/v1/batches``): one row per batch in the ``batches`` table.

A batch belongs to the principal that created it: the gateway names the owner on every
read, and another owner's batch is as absent as one that never existed. The batch job
reads and moves its own batch by id alone. Status changes are conditional updates
(:meth:`BatchStore.move`), so a cancel and the job's own progress never overwrite each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from welip.store._database import Database, as_utc, utcnow
from welip.store._pages import owner_page
from welip.store._schema import batches

ACTIVE_BATCH_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
"""Statuses of a batch whose job has not ended."""

_TIMES = (
    "created_at",
    "expires_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
# Status -> the column that records when it was reached.
_REACHED_AT = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}


@dataclass(frozen=True, kw_only=True)
class BatchRecord:
    """One batch: a row of ``batches``."""

    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    request_total: int
    request_completed: int = 0
    request_failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    batch_metadata: dict[str, str] | None = None
    errors: list[dict[str, Any]] | None = None
    job_id: str | None = None
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None

    def openai(self) -> dict[str, Any]:
        """The batch object as OpenAI's API returns it (no owner, no job id)."""
        times = {name: _seconds(getattr(self, name)) for name in _TIMES}
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            **times,
            "request_counts": {
                "total": self.request_total,
                "completed": self.request_completed,
                "failed": self.request_failed,
            },
            "metadata": self.batch_metadata,
        }


class BatchStore:
    """The ``batches`` table."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    def create_batch(
        self,
        *,
        owner: str,
        endpoint: str,
        input_file_id: str,
        completion_window: str,
        request_total: int,
        expires_at: datetime,
        metadata: dict[str, str] | None = None,
    ) -> BatchRecord:
        """Record a new batch, ``validating``."""
        record = BatchRecord(
            id="batch_" + uuid.uuid4().hex,
            owner=owner,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            status="validating",
            request_total=request_total,
            batch_metadata=metadata,
            created_at=utcnow(),
            expires_at=expires_at,
        )
        with self._engine.begin() as conn:
            conn.execute(batches.insert().values(**asdict(record)))
        return record

    def get_batch(self, batch_id: str, owner: str | None) -> BatchRecord | None:
        """Batch ``batch_id`` if ``owner``'s (any owner's with None, as the batch job reads it)."""
        query = batches.select().where(batches.c.id == batch_id)
        if owner is not None:
            query = query.where(batches.c.owner == owner)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _record(row) if row is not None else None

    def list_batches(
        self, owner: str, *, limit: int = 20, after: str | None = None
    ) -> tuple[list[BatchRecord], bool]:
        """A page of ``owner``'s batches, newest first, and whether more follow.

        ``after`` is the id of the last batch of the previous page; an id that is not one
        of the owner's batches starts from the newest.
        """
        query = batches.select().where(batches.c.owner == owner)
        with self._engine.connect() as conn:
            rows, more = owner_page(conn, batches, query, owner, limit=limit, after=after)
        return [_record(r) for r in rows], more

    def count_active(self, owner: str) -> int:
        """How many of ``owner``'s batches have not ended."""
        query = sa.select(sa.func.count()).where(
            batches.c.owner == owner, batches.c.status.in_(ACTIVE_BATCH_STATUSES)
        )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def move(self, batch_id: str, to: str | None, *, when: tuple[str, ...] = (), **fields: Any) -> bool:
        """Set ``status`` to ``to`` (stamping its ``*_at``) and ``fields``, if the status is in ``when``.

        ``to`` None updates ``fields`` only; ``when`` empty: whatever the status. False when
        the batch is missing or its status is not in ``when``.
        """
        values = dict(fields)
        unknown = set(values) - set(batches.c.keys())
        if unknown:
            raise ValueError(f"not columns of batches: {sorted(unknown)}")
        if to is not None:
            values["status"] = to
            if to in _REACHED_AT:
                values.setdefault(_REACHED_AT[to], utcnow())
        query = batches.update().where(batches.c.id == batch_id).values(**values)
        if when:
            query = query.where(batches.c.status.in_(when))
        with self._engine.begin() as conn:
            return bool(conn.execute(query).rowcount)


def _seconds(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _record(row: Mapping[Any, Any]) -> BatchRecord:
    values = dict(row)
    for name in _TIMES:
        if values[name] is not None:
            values[name] = as_utc(values[name])
    return BatchRecord(**values)
