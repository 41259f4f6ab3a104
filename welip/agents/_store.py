"""Threads and runs in the metadata database, shared by every replica of the agents app.

The thread row is the lock of its thread: a run holds it by setting
``active_run_id`` in one conditional UPDATE, so two replicas never run the same
thread at once, and queued runs (``enqueue``) take it in creation order. Runs
heartbeat while they execute; a run whose replica died stops heartbeating, and the
next claim fails it and frees the thread. The graph state itself is in LangGraph's
checkpoint tables, not here.

With encryption keys configured (``WELIP_ENCRYPTION_KEYS``, see :mod:`welip.store._crypto`)
a run's ``kwargs`` (its input: the conversation's new messages) are stored as one
AES-256-GCM ciphertext bound to the run id, and :func:`checkpoint_serde` gives LangGraph's
checkpointer a serializer that encrypts every checkpoint blob and pending write under the
same keys, carrying the key id so keys rotate without rewriting old checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from welip.store import (
    Database,
    DecryptionError,
    Keyring,
    agent_runs,
    agent_threads,
    as_utc,
    keyring_from_env,
    utcnow,
)

ACTIVE_RUN_STATUSES = ("pending", "running")


def thread_key(owner: str, thread_id: str) -> str:
    """The internal id of ``owner``'s thread ``thread_id``: its row's key and the checkpointer's
    ``thread_id``, so two owners' threads of the same id never share a row or a state."""
    return f"{hashlib.sha256(owner.encode()).hexdigest()[:32]}:{thread_id}"


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value is not None else None


@dataclass
class ThreadRow:
    thread_key: str
    thread_id: str
    owner: str
    assistant_id: str | None
    status: str
    metadata: dict[str, Any]
    active_run_id: str | None
    created_at: datetime
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "thread_id": self.thread_id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "metadata": self.metadata,
            "status": self.status,
        }


@dataclass
class RunRow:
    run_id: str
    thread_id: str
    thread_key: str
    assistant_id: str
    owner: str
    status: str
    multitask_strategy: str
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    error: str | None
    replica: str | None
    heartbeat_at: datetime | None
    cancel_requested_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "assistant_id": self.assistant_id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "status": self.status,
            "metadata": self.metadata,
            "multitask_strategy": self.multitask_strategy,
            "kwargs": self.kwargs,
            "error": self.error,
        }


def _thread(row: Any) -> ThreadRow:
    m = row._mapping
    return ThreadRow(
        thread_key=m["thread_key"],
        thread_id=m["thread_id"],
        owner=m["owner"],
        assistant_id=m["assistant_id"],
        status=m["status"],
        metadata=m["thread_metadata"] or {},
        active_run_id=m["active_run_id"],
        created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
        updated_at=as_utc(m["updated_at"]),  # type: ignore[arg-type]
    )


def _run(row: Any, keyring: Keyring) -> RunRow:
    m = row._mapping
    kwargs = m["kwargs"]
    if isinstance(kwargs, str):  # sealed by AgentStore.create_run (a plaintext one is an object)
        kwargs = json.loads(keyring.decrypt(kwargs, _kwargs_context(m["run_id"])))
    return RunRow(
        run_id=m["run_id"],
        thread_id=m["thread_id"],
        thread_key=m["thread_key"],
        assistant_id=m["assistant_id"],
        owner=m["owner"],
        status=m["status"],
        multitask_strategy=m["multitask_strategy"],
        kwargs=kwargs or {},
        metadata=m["run_metadata"] or {},
        error=m["error"],
        replica=m["replica"],
        heartbeat_at=as_utc(m["heartbeat_at"]),
        cancel_requested_at=as_utc(m["cancel_requested_at"]),
        created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
        updated_at=as_utc(m["updated_at"]),  # type: ignore[arg-type]
    )


class ThreadBusy(Exception):
    """The thread has a run (``multitask_strategy: reject``), or its queue is full."""


class AgentStore:
    """The ``agent_threads`` and ``agent_runs`` tables of the metadata database (SQLAlchemy Core).

    One of the database's aggregate stores, as :class:`welip.store.KeyStore` and the others are.
    """

    def __init__(
        self, database: Database, *, stale_run_s: float = 30, keyring: Keyring | None = None
    ) -> None:
        """Args:
        database: The metadata database.
        stale_run_s: A running run without a heartbeat for this long is failed.
        keyring: Seals runs' ``kwargs`` (``WELIP_ENCRYPTION_KEYS`` or ``WELIP_ENCRYPTION_KEYS_FILE``
            by default; none set: stored as they are).

        Raises:
            ValueError: The configured keys are malformed.
        """
        self._engine = database.engine
        self.stale_run_s = stale_run_s
        self._keyring = keyring if keyring is not None else keyring_from_env()

    # -- threads ------------------------------------------------------------------

    def create_thread(
        self,
        thread_id: str,
        owner: str,
        metadata: dict[str, Any],
        *,
        assistant_id: str | None = None,
        status: str = "idle",
    ) -> ThreadRow | None:
        """A new thread; None if ``owner`` has one with this id already.

        ``assistant_id`` and ``status`` are a copied thread's (its checkpoints come with it);
        a new thread takes its assistant from ``metadata["graph_id"]`` and is idle.
        """
        now = utcnow()
        if assistant_id is None and isinstance(metadata.get("graph_id"), str):
            assistant_id = metadata["graph_id"]
        row = {
            "thread_key": thread_key(owner, thread_id),
            "thread_id": thread_id,
            "owner": owner,
            "assistant_id": assistant_id,
            "status": status,
            "thread_metadata": metadata,
            "active_run_id": None,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._engine.begin() as conn:
                conn.execute(agent_threads.insert().values(**row))
        except sa.exc.IntegrityError:
            return None
        return _thread(_Row(row))

    def get_thread(self, thread_id: str, owner: str) -> ThreadRow | None:
        """The thread, if ``owner`` owns it (another principal sees nothing)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                agent_threads.select().where(
                    agent_threads.c.thread_id == thread_id, agent_threads.c.owner == owner
                )
            ).first()
        return _thread(row) if row else None

    def update_thread(
        self,
        thread_id: str,
        owner: str,
        metadata: dict[str, Any],
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> ThreadRow | None:
        """Merge ``metadata`` into the thread's (as LangGraph's PATCH does).

        ``check`` sees the merged metadata before it is written; what it raises leaves the thread as it was.
        """
        with self._engine.begin() as conn:
            row = conn.execute(
                agent_threads.select()
                .where(agent_threads.c.thread_id == thread_id, agent_threads.c.owner == owner)
                .with_for_update()
            ).first()
            if row is None:
                return None
            merged = {**(row._mapping["thread_metadata"] or {}), **metadata}
            if check is not None:
                check(merged)
            conn.execute(
                agent_threads.update()
                .where(agent_threads.c.thread_key == row._mapping["thread_key"])
                .values(thread_metadata=merged, updated_at=utcnow())
            )
        return self.get_thread(thread_id, owner)

    def delete_threads(self, thread_keys: list[str]) -> None:
        """Delete thread rows (by ``thread_key``) and their runs (the caller deletes the checkpoints)."""
        if not thread_keys:
            return
        with self._engine.begin() as conn:
            conn.execute(agent_runs.delete().where(agent_runs.c.thread_key.in_(thread_keys)))
            conn.execute(agent_threads.delete().where(agent_threads.c.thread_key.in_(thread_keys)))

    def search_threads(
        self, owner: str, *, metadata: dict[str, Any], status: str | None, limit: int, offset: int
    ) -> list[ThreadRow]:
        query = agent_threads.select().where(agent_threads.c.owner == owner)
        if status:
            query = query.where(agent_threads.c.status == status)
        query = query.order_by(agent_threads.c.created_at.desc())
        with self._engine.connect() as conn:
            rows = [_thread(r) for r in conn.execute(query)]
        # Metadata filters are equality on top-level keys, checked here for every dialect.
        rows = [r for r in rows if all(r.metadata.get(k) == v for k, v in metadata.items())]
        return rows[offset : offset + limit]

    def expired_threads(self, idle_s: float, limit: int = 500) -> list[str]:
        """The keys of threads with no run and no activity for ``idle_s`` seconds."""
        before = utcnow() - timedelta(seconds=idle_s)
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(agent_threads.c.thread_key)
                .where(agent_threads.c.updated_at < before, agent_threads.c.active_run_id.is_(None))
                .limit(limit)
            )
            return [r[0] for r in rows]

    # -- runs ---------------------------------------------------------------------

    def create_run(
        self, run: dict[str, Any], *, reject_if_busy: bool, max_pending: int, replica: str | None = None
    ) -> RunRow:
        """Insert a run. With ``reject_if_busy`` it takes the thread at once (status ``running``,
        on ``replica``) or raises :class:`ThreadBusy`; otherwise it queues (``pending``)."""
        now = utcnow()
        row = {
            **run,
            "status": "running" if reject_if_busy else "pending",
            "error": None,
            "replica": replica if reject_if_busy else None,
            "heartbeat_at": now if reject_if_busy else None,
            "cancel_requested_at": None,
            "created_at": now,
            "updated_at": now,
        }
        key = run["thread_key"]
        with self._engine.begin() as conn:
            if reject_if_busy:
                # The common case (a free thread) is one UPDATE; a held thread is checked
                # for a dead holder before refusing.
                if not self._take(conn, key, run["run_id"], run["assistant_id"], now):
                    self._fail_stale(conn, key)
                    if not self._take(conn, key, run["run_id"], run["assistant_id"], now):
                        raise ThreadBusy("the thread has a run in progress")
            else:
                self._fail_stale(conn, key)
                pending = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(agent_runs)
                    .where(agent_runs.c.thread_key == key, agent_runs.c.status == "pending")
                ).scalar_one()
                if pending >= max_pending:
                    raise ThreadBusy(f"the thread already has {pending} queued runs")
            stored = row
            if self._keyring.enabled:
                sealed = self._keyring.encrypt(json.dumps(row["kwargs"]), _kwargs_context(row["run_id"]))
                stored = {**row, "kwargs": sealed}
            conn.execute(agent_runs.insert().values(**stored))
        return _run(_Row(row), self._keyring)

    @staticmethod
    def _take(conn: sa.Connection, key: str, run_id: str, assistant_id: str, now: datetime) -> bool:
        taken = conn.execute(
            agent_threads.update()
            .where(agent_threads.c.thread_key == key, agent_threads.c.active_run_id.is_(None))
            .values(
                active_run_id=run_id,
                status="busy",
                updated_at=now,
                assistant_id=sa.func.coalesce(agent_threads.c.assistant_id, assistant_id),
            )
        ).rowcount
        return bool(taken)

    def claim(self, run_id: str, key: str, replica: str | None) -> bool:
        """Start a pending run if it holds the thread (``key``) or is next in line; True when it started."""
        now = utcnow()
        with self._engine.begin() as conn:
            self._fail_stale(conn, key)
            thread = conn.execute(
                sa.select(agent_threads.c.active_run_id).where(agent_threads.c.thread_key == key)
            ).first()
            if thread is None:
                return False
            holder = thread[0]
            if holder != run_id:
                if holder is not None:
                    return False
                first = conn.execute(
                    sa.select(agent_runs.c.run_id)
                    .where(agent_runs.c.thread_key == key, agent_runs.c.status == "pending")
                    .order_by(agent_runs.c.created_at, agent_runs.c.run_id)
                    .limit(1)
                ).first()
                if first is None or first[0] != run_id:
                    return False
                assistant = conn.execute(
                    sa.select(agent_runs.c.assistant_id).where(agent_runs.c.run_id == run_id)
                ).scalar_one()
                if not self._take(conn, key, run_id, assistant, now):
                    return False
            started = conn.execute(
                agent_runs.update()
                .where(agent_runs.c.run_id == run_id, agent_runs.c.status == "pending")
                .values(status="running", replica=replica, heartbeat_at=now, updated_at=now)
            ).rowcount
            if not started:  # cancelled while queued: let the thread go
                conn.execute(
                    agent_threads.update()
                    .where(agent_threads.c.thread_key == key, agent_threads.c.active_run_id == run_id)
                    .values(active_run_id=None, status="idle", updated_at=now)
                )
                return False
        return True

    def _fail_stale(self, conn: sa.Connection, key: str) -> None:
        # A run whose replica stopped heartbeating (killed, restarted) frees its thread.
        stale_before = utcnow() - timedelta(seconds=self.stale_run_s)
        holder = conn.execute(
            sa.select(agent_runs.c.run_id, agent_runs.c.heartbeat_at, agent_runs.c.status)
            .select_from(agent_threads.join(agent_runs, agent_runs.c.run_id == agent_threads.c.active_run_id))
            .where(agent_threads.c.thread_key == key)
        ).first()
        if holder is None or holder[2] != "running":
            return
        beat = as_utc(holder[1])
        if beat is not None and beat >= stale_before:
            return
        now = utcnow()
        conn.execute(
            agent_runs.update()
            .where(agent_runs.c.run_id == holder[0])
            .values(status="error", error="the replica running it stopped", updated_at=now)
        )
        conn.execute(
            agent_threads.update()
            .where(agent_threads.c.thread_key == key)
            .values(active_run_id=None, status="error", updated_at=now)
        )

    def heartbeat(self, run_id: str) -> bool:
        """Mark the run alive; True if somebody asked to cancel it."""
        with self._engine.begin() as conn:
            conn.execute(
                agent_runs.update().where(agent_runs.c.run_id == run_id).values(heartbeat_at=utcnow())
            )
            row = conn.execute(
                sa.select(agent_runs.c.cancel_requested_at).where(agent_runs.c.run_id == run_id)
            ).first()
        return bool(row and row[0] is not None)

    def finish_run(self, run_id: str, key: str, status: str, thread_status: str, error: str | None) -> None:
        """Record the run's end and release its thread (``thread_key``)."""
        now = utcnow()
        with self._engine.begin() as conn:
            conn.execute(
                agent_runs.update()
                .where(agent_runs.c.run_id == run_id)
                .values(status=status, error=error, updated_at=now)
            )
            conn.execute(
                agent_threads.update()
                .where(agent_threads.c.thread_key == key, agent_threads.c.active_run_id == run_id)
                .values(active_run_id=None, status=thread_status, updated_at=now)
            )

    def request_cancel(self, run_id: str) -> RunRow | None:
        """Cancel a queued run at once; flag a running one for its replica."""
        now = utcnow()
        with self._engine.begin() as conn:
            conn.execute(
                agent_runs.update()
                .where(agent_runs.c.run_id == run_id, agent_runs.c.status == "pending")
                .values(status="interrupted", error="cancelled", cancel_requested_at=now, updated_at=now)
            )
            conn.execute(
                agent_runs.update()
                .where(agent_runs.c.run_id == run_id, agent_runs.c.status == "running")
                .values(cancel_requested_at=now)
            )
            row = conn.execute(agent_runs.select().where(agent_runs.c.run_id == run_id)).first()
        return _run(row, self._keyring) if row else None

    def get_run(self, run_id: str, owner: str, thread_id: str | None = None) -> RunRow | None:
        query = agent_runs.select().where(agent_runs.c.run_id == run_id, agent_runs.c.owner == owner)
        if thread_id is not None:
            query = query.where(agent_runs.c.thread_id == thread_id)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return _run(row, self._keyring) if row else None

    def list_runs(self, thread_id: str, owner: str, limit: int, offset: int) -> list[RunRow]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                agent_runs.select()
                .where(agent_runs.c.thread_id == thread_id, agent_runs.c.owner == owner)
                .order_by(agent_runs.c.created_at.desc())
                .limit(limit)
                .offset(offset)
            )
            return [_run(r, self._keyring) for r in rows]


class KeyringCipher:
    """LangGraph's ``CipherProtocol`` over a :class:`~welip.store.Keyring`: AES-256-GCM, and the
    key id in the cipher name (``wlpenc:v1:<key id>``) the checkpointer stores beside each blob."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def encrypt(self, plaintext: bytes) -> tuple[str, bytes]:
        """``(cipher name with the key id, nonce | ciphertext | tag)`` under the current key."""
        kid, blob = self.keyring.encrypt_bytes(plaintext, _CHECKPOINT_CONTEXT)
        return f"{_CIPHER_PREFIX}{kid}", blob

    def decrypt(self, ciphername: str, ciphertext: bytes) -> bytes:
        """The plaintext of a blob :meth:`encrypt` sealed, under the key its cipher name names.

        Raises:
            DecryptionError: An unknown cipher, a key id not configured, or an altered blob.
        """
        if not ciphername.startswith(_CIPHER_PREFIX):
            raise DecryptionError(f"checkpoint blob sealed with an unknown cipher {ciphername!r}")
        return self.keyring.decrypt_bytes(
            ciphername.removeprefix(_CIPHER_PREFIX), ciphertext, _CHECKPOINT_CONTEXT
        )


def checkpoint_serde(keyring: Keyring | None = None) -> Any:
    """The ``serde=`` for LangGraph's checkpointers: LangGraph's ``EncryptedSerializer`` over
    :class:`KeyringCipher` when a key is configured, else None (LangGraph's default).

    Checkpoints written before encryption was turned on still load. Without keys, a checkpoint
    written encrypted fails to load with LangGraph's error naming its type
    (``msgpack+wlpenc:v1:<key id>``).

    Args:
        keyring: The keys (``WELIP_ENCRYPTION_KEYS`` or ``WELIP_ENCRYPTION_KEYS_FILE`` by default).
    """
    keyring = keyring if keyring is not None else keyring_from_env()
    if not keyring.enabled:
        return None
    from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

    return EncryptedSerializer(KeyringCipher(keyring))


# The cipher name LangGraph appends to a blob's type (``msgpack+wlpenc:v1:k2``): one "+" at most.
_CIPHER_PREFIX = "wlpenc:v1:"
_CHECKPOINT_CONTEXT = "langgraph.checkpoint"


def _kwargs_context(run_id: str) -> str:
    # Bound to the run: kwargs copied onto another run fail authentication.
    return f"agent_runs.kwargs:{run_id}"


class _Row:
    """A dict seen as a result row (``._mapping``), to build rows just written."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._mapping = values
