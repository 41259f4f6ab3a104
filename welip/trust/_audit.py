"""Audit records written off the request path, batched, and never lost.

The request path only appends a record to an in-memory queue. A writer thread
flushes the queue every ``flush_interval_s`` in one transaction; if the database is
unreachable the batch is appended (and fsynced) to a spool file instead, and spooled
files are replayed once the database answers again. Records carry an id minted by
the gateway and are inserted with ``ON CONFLICT DO NOTHING``, so a replay that
overlaps an earlier partial write adds no duplicate.

Both stores are bounded. The spool files together hold at most ``max_spool_bytes``;
beyond it records wait in memory. Memory holds at most ``max_queue_records``, counting
the room promised to requests in flight (:meth:`AuditWriter.reserve`): a request is
admitted only with such a promise, so every admitted request gets its record, and a
request that finds no room is refused (503) instead of being served unaudited. A record
nobody was promised room for (a request refused on arrival) is dropped when there is
none, and counted.

With encryption keys configured (``WELIP_ENCRYPTION_KEYS``, see :mod:`welip.store._crypto`)
every spooled line is one AES-256-GCM ciphertext of the record's JSON, so a spool on disk
holds no prompt (nor principal) in the clear; replay decrypts it, under whichever configured
key sealed it. Lines spooled before encryption was turned on replay as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.util import metrics

from welip.store import Keyring, keyring_from_env
from welip.trust._config import AuditConfig
from welip.trust._guardrails import Verdict

logger = logging.getLogger("welip.gateway")

SPOOL_GLOB = "audit-*.jsonl"
# The associated data of a spooled line: a line cannot pass for another kind of ciphertext.
SPOOL_CONTEXT = "audit.spool"


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One request as the audit log keeps it: never the key, the prompt only if asked for.

    The fields are the ``audit_log`` table's columns; a spooled record is their JSON.
    """

    id: str  # minted per request: a replay that overlaps an earlier write adds nothing
    ts: str  # arrival, ISO 8601 with its UTC offset
    request_id: str
    principal: str | None = None
    principal_kind: str  # api_key | oidc | anonymous
    key_id: str | None = None
    role: str | None = None
    via: str | None = None  # the service that called on the principal's behalf (a caller token)
    method: str
    route: str
    model: str | None = None
    status: int
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float
    cache: str | None = None  # hit | miss | None when not cacheable
    guardrails: list[Verdict] | None = None
    replica: str | None = None
    body: str | None = None  # the request after input redaction, only with audit.record_prompts

    def row(self) -> dict[str, Any]:
        """The record as ``AuditStore.write_audit`` and the spool take it."""
        return dataclasses.asdict(self)


class AuditWriter:
    """Queue audit records and write them to ``write`` (normally ``AuditStore.write_audit``)."""

    def __init__(
        self,
        write: Callable[[list[dict[str, Any]]], None],
        config: AuditConfig,
        *,
        keyring: Keyring | None = None,
    ) -> None:
        """Args:
        write: Writes a batch of records in one transaction.
        config: The audit section of the trust config.
        keyring: Seals spooled lines (``WELIP_ENCRYPTION_KEYS`` or ``WELIP_ENCRYPTION_KEYS_FILE``
            by default; none set: lines stay plaintext JSON).

        Raises:
            ValueError: The configured keys are malformed (at start-up, not on a request).
        """
        self._write = write
        self._config = config
        self._keyring = keyring if keyring is not None else keyring_from_env()
        if config.record_prompts and not self._keyring.enabled:
            logger.warning(
                "audit.record_prompts is on and no encryption key is configured (WELIP_ENCRYPTION_KEYS "
                "or WELIP_ENCRYPTION_KEYS_FILE): request bodies are stored and spooled in plaintext"
            )
        self._queue: deque[AuditRecord] = deque()
        self._lock = threading.Lock()
        self._held = 0  # records in memory: queued, or taken by a flush that has not finished
        self._reserved = 0  # room promised to admitted requests that have not settled yet
        self._dropped = 0
        self._spool_full = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.spool_dir = Path(config.spool_dir).expanduser()
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._spool_path = self.spool_dir / f"audit-{os.getpid()}.jsonl"
        self.database_up = True
        self._spooled = 0  # records this writer spooled that are not in the database yet
        self._queue_depth = metrics.Gauge(
            "welip_audit_queue_depth",
            description="Audit records held in memory, not yet written (at most audit.max_queue_records).",
        )
        self._spool_depth = metrics.Gauge(
            "welip_audit_spool_depth",
            description="Audit records spooled to disk while the database was unreachable, not yet replayed.",
        )
        self._spool_bytes_gauge = metrics.Gauge(
            "welip_audit_spool_bytes",
            description="Bytes in the audit spool directory (bounded by audit.max_spool_bytes).",
        )
        self._dropped_counter = metrics.Counter(
            "welip_audit_dropped_records",
            description=(
                "Audit records not written: a refused request's when memory had no room (full), "
                "an unauthenticated one's over the per-address bound (unauthenticated)."
            ),
            tag_keys=("reason",),
        )
        self._spool_bytes = self._measure_spool()
        self._thread = threading.Thread(target=self._run, name="welip-audit", daemon=True)
        self._thread.start()

    def reserve(self) -> bool:
        """Promise room for one request's record, or False when memory has none left.

        A request admitted with the promise passes ``reserved=True`` to :meth:`submit`
        (or calls :meth:`release` if it records nothing). Cheap: one uncontended lock.
        """
        with self._lock:
            if self._held + self._reserved >= self._config.max_queue_records:
                return False
            self._reserved += 1
            return True

    def release(self) -> None:
        """Give back the room :meth:`reserve` promised, unused."""
        with self._lock:
            self._reserved -= 1

    def submit(self, record: AuditRecord, *, reserved: bool = False) -> bool:
        """Queue one record (thread-safe, never blocks); False if it was dropped for lack of room.

        ``reserved``: the record uses room :meth:`reserve` promised, and is always queued.
        """
        with self._lock:
            if reserved:
                self._reserved -= 1
            elif self._held + self._reserved >= self._config.max_queue_records:
                self._dropped += 1
                self._dropped_counter.inc(1, tags={"reason": "full"})
                return False
            self._held += 1
        self._queue.append(record)
        if len(self._queue) >= self._config.batch_size:
            self._wake.set()
        return True

    def drop(self, reason: str) -> None:
        """Count a record not written by the caller's choice (``reason`` labels the metric)."""
        with self._lock:
            self._dropped += 1
        self._dropped_counter.inc(1, tags={"reason": reason})

    def close(self, timeout_s: float = 10) -> None:
        """Write what is queued (to the database or the spool) and stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def pending(self) -> int:
        """Records held in memory, not yet in the database or the spool."""
        return self._held

    def spool_bytes(self) -> int:
        """Bytes in the spool directory, as of the last flush."""
        return self._spool_bytes

    def dropped(self) -> int:
        """Records this writer did not write: no room for them, or dropped by :meth:`drop`."""
        return self._dropped

    def spooled(self) -> int:
        """Records this writer spooled to disk that are not in the database yet."""
        return self._spooled

    def _run(self) -> None:
        while True:
            self._wake.wait(self._config.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._flush()
            except Exception:
                logger.exception("audit flush failed")
            self._queue_depth.set(self._held)
            self._spool_depth.set(self._spooled)
            self._spool_bytes_gauge.set(self._spool_bytes)
            if stopping:
                if self._held:
                    logger.error("audit writer stopped with %d records it could not write", self._held)
                return

    def _take(self) -> list[AuditRecord]:
        batch: list[AuditRecord] = []
        while self._queue and len(batch) < self._config.batch_size:
            batch.append(self._queue.popleft())
        return batch

    def _flush(self) -> None:
        while records := self._take():
            batch = [r.row() for r in records]
            if not (self._try_write(batch) or self._spool(batch)):
                # Neither the database nor the spool has room: the batch waits in memory,
                # first in line, for the next flush.
                self._queue.extendleft(reversed(records))
                break
            with self._lock:
                self._held -= len(records)
        if self.database_up:
            self._replay()
            self._spool_bytes = self._measure_spool()

    def _try_write(self, batch: list[dict[str, Any]]) -> bool:
        try:
            self._write(batch)
        except Exception as exc:  # noqa: BLE001 - any database failure spools
            if self.database_up:
                logger.warning("audit database unreachable (%s); spooling to %s", exc, self.spool_dir)
            self.database_up = False
            return False
        if not self.database_up:
            logger.info("audit database reachable again; replaying the spool")
        self.database_up = True
        return True

    def _spool(self, batch: list[dict[str, Any]]) -> bool:
        """Append ``batch`` to this writer's spool file; False when the spool has no room for it."""
        lines = (json.dumps(r, default=str, separators=(",", ":")) for r in batch)
        data = "".join(self._keyring.encrypt(line, SPOOL_CONTEXT) + "\n" for line in lines).encode()
        # Other replicas on this node share the directory: measured each time, never cached.
        self._spool_bytes = self._measure_spool()
        if self._spool_bytes + len(data) > self._config.max_spool_bytes:
            if not self._spool_full:
                logger.error(
                    "audit spool %s is full (%d bytes, audit.max_spool_bytes %d): records wait in "
                    "memory, and new requests are refused once audit.max_queue_records are held",
                    self.spool_dir,
                    self._spool_bytes,
                    self._config.max_spool_bytes,
                )
            self._spool_full = True
            return False
        self._spool_full = False
        with open(self._spool_path, "ab") as f, _locked(f):
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._spooled += len(batch)
        self._spool_bytes += len(data)
        return True

    def _measure_spool(self) -> int:
        total = 0
        for path in self.spool_dir.glob(SPOOL_GLOB):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def _replay(self) -> None:
        for path in sorted(self.spool_dir.glob(SPOOL_GLOB)):
            if not _replayable(path):
                continue
            try:
                self._replay_file(path)
            except Exception as exc:  # noqa: BLE001 - keep the file for the next round
                logger.warning("audit spool replay of %s failed: %s", path, exc)
                self.database_up = False
                return

    def _replay_file(self, path: Path) -> None:
        try:
            f = open(path, "r+", encoding="utf-8")  # noqa: SIM115 - held across the lock
        except FileNotFoundError:
            return
        replayed = 0
        with f, _locked(f):
            # Batch by batch, so replaying a spool of max_spool_bytes never holds it all in memory;
            # a failure part-way keeps the file, and its next replay skips what was written.
            batch: list[dict[str, Any]] = []
            for record in _parse(f, path, self._keyring):
                batch.append(record)
                if len(batch) >= self._config.batch_size:
                    self._write(batch)
                    replayed += len(batch)
                    batch = []
            if batch:
                self._write(batch)
                replayed += len(batch)
            # Written: empty the file under the same lock an appender takes.
            f.truncate(0)
            with contextlib.suppress(FileNotFoundError):
                if path != self._spool_path:
                    path.unlink()
        if path == self._spool_path:
            self._spooled = 0
        if replayed:
            logger.info("replayed %d spooled audit records from %s", replayed, path.name)


@contextlib.contextmanager
def _locked(f: Any) -> Iterator[None]:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _replayable(path: Path) -> bool:
    """Our own spool, or one whose process is gone (a replica that died with records)."""
    try:
        pid = int(path.stem.removeprefix("audit-"))
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _parse(f: Any, path: Path, keyring: Keyring) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(f, start=1):
        if not line.strip():
            continue
        if Keyring.is_encrypted(line):
            if not line.endswith("\n"):
                logger.warning("skipping a torn line %d in %s", n, path)
                continue
            # A whole line that does not decrypt (its key is gone, or it was altered) raises:
            # the file is kept for a replay once the key is configured again, never dropped.
            line = keyring.decrypt(line.rstrip("\n"), SPOOL_CONTEXT)
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            # Only a crash mid-append leaves a torn line, and only as the last one.
            logger.warning("skipping a torn line %d in %s", n, path)
