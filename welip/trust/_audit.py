"""Audit records written off the request path, batched, and never lost.

The request path only appends a record to an in-memory queue. A writer thread
flushes the queue every ``flush_interval_s`` in one transaction; if the database is
unreachable the batch is appended (and fsynced) to a spool file instead, and spooled
files are replayed once the database answers again. Records carry an id minted by
the gateway and are inserted with ``ON CONFLICT DO NOTHING``, so a replay that
overlaps an earlier partial write adds no duplicate.
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

from welip.trust._config import AuditConfig
from welip.trust._guardrails import Verdict

logger = logging.getLogger("welip.gateway")

SPOOL_GLOB = "audit-*.jsonl"


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

    def __init__(self, write: Callable[[list[dict[str, Any]]], None], config: AuditConfig) -> None:
        self._write = write
        self._config = config
        self._queue: deque[AuditRecord] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.spool_dir = Path(config.spool_dir).expanduser()
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._spool_path = self.spool_dir / f"audit-{os.getpid()}.jsonl"
        self.database_up = True
        self._spooled = 0  # records this writer spooled that are not in the database yet
        self._queue_depth = metrics.Gauge(
            "welip_audit_queue_depth", description="Audit records queued in memory, not yet written."
        )
        self._spool_depth = metrics.Gauge(
            "welip_audit_spool_depth",
            description="Audit records spooled to disk while the database was unreachable, not yet replayed.",
        )
        self._thread = threading.Thread(target=self._run, name="welip-audit", daemon=True)
        self._thread.start()

    def submit(self, record: AuditRecord) -> None:
        """Queue one record (thread-safe, never blocks)."""
        self._queue.append(record)
        if len(self._queue) >= self._config.batch_size:
            self._wake.set()

    def close(self, timeout_s: float = 10) -> None:
        """Write what is queued (to the database or the spool) and stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def pending(self) -> int:
        """Records queued in memory."""
        return len(self._queue)

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
            self._queue_depth.set(len(self._queue))
            self._spool_depth.set(self._spooled)
            if stopping:
                return

    def _take(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        while self._queue and len(batch) < self._config.batch_size:
            batch.append(self._queue.popleft().row())
        return batch

    def _flush(self) -> None:
        while batch := self._take():
            if not self._try_write(batch):
                self._spool(batch)
        if self.database_up:
            self._replay()

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

    def _spool(self, batch: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in batch)
        with open(self._spool_path, "a", encoding="utf-8") as f, _locked(f):
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        self._spooled += len(batch)

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
        with f, _locked(f):
            records = list(_parse(f, path))
            for start in range(0, len(records), self._config.batch_size):
                self._write(records[start : start + self._config.batch_size])
            # Written: empty the file under the same lock an appender takes.
            f.truncate(0)
            with contextlib.suppress(FileNotFoundError):
                if path != self._spool_path:
                    path.unlink()
        if path == self._spool_path:
            self._spooled = 0
        if records:
            logger.info("replayed %d spooled audit records from %s", len(records), path.name)


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


def _parse(f: Any, path: Path) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            # Only a crash mid-append leaves a torn line, and only as the last one.
            logger.warning("skipping a torn line %d in %s", n, path)
