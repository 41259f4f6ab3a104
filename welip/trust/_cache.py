"""Exact-match response cache for deterministic requests.

Only non-streamed requests that ask for ``temperature: 0`` (and one choice) are
cached, keyed on the model, the caller (its principal and role by default; its role
only with ``cache.scope: role``: output guardrails differ per role) and the request
body with volatile fields removed. In Redis when ``WELIP_REDIS_URL`` is
set (shared by every replica), else in a bounded in-process LRU. Redis unreachable (an
outage, a Sentinel failover) makes every look-up a miss and every store a no-op: the
cache is an optimisation, never a reason to fail a request.

Concurrent identical requests in one replica share one generation (:class:`InFlight`):
the first that misses generates, the others wait for its answer and are answered as
``coalesced``. A leader that fails, is refused by a guardrail or whose client leaves
hands the key on: its followers generate (one of them leading the rest).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

_VOLATILE = frozenset({"stream", "stream_options", "user", "request_id", "metadata"})


def cache_key(payload: dict[str, Any], partition: list[str | None]) -> str | None:
    """The cache key of a request body among ``partition`` (who shares it); None: not cacheable."""
    if payload.get("stream") or payload.get("temperature") != 0 or (payload.get("n") or 1) != 1:
        return None
    canonical = {k: v for k, v in payload.items() if k not in _VOLATILE}
    text = json.dumps([partition, canonical], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache(Protocol):
    """Where cached answers live."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...


class RedisResponseCache:
    """Answers in Redis, expiring after ``ttl_s``."""

    def __init__(self, redis: Any, prefix: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(f"{self._prefix}:cache:{key}")
        except (RedisError, OSError) as exc:
            logger.warning("response cache unavailable, answering as a miss: %s", exc)
            return None
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self._redis.set(f"{self._prefix}:cache:{key}", value, ex=self._ttl_s)
        except (RedisError, OSError) as exc:
            logger.warning("response cache unavailable, answer not stored: %s", exc)


class MemoryResponseCache:
    """Answers in this replica's memory: at most ``max_entries``, least recently used out."""

    def __init__(self, max_entries: int, ttl_s: int) -> None:
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl_s = ttl_s

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            self._entries.pop(key, None)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def put(self, key: str, value: bytes) -> None:
        self._entries[key] = (value, time.monotonic() + self._ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class InFlight:
    """Leaders of the cacheable generations running in this replica, by cache key."""

    def __init__(self) -> None:
        self._leaders: dict[str, asyncio.Future[bytes | None]] = {}

    def __len__(self) -> int:
        return len(self._leaders)

    def lead_or_follow(self, key: str) -> tuple[asyncio.Future[bytes | None], bool]:
        """The generation of ``key`` to wait for and False, or a new one this request leads and True."""
        running = self._leaders.get(key)
        if running is not None:
            return running, False
        lead: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._leaders[key] = lead
        return lead, True

    def finish(self, key: str, lead: asyncio.Future[bytes | None], answer: bytes | None) -> None:
        """End ``lead``: its followers get ``answer`` (None: generate for yourselves)."""
        if self._leaders.get(key) is lead:
            del self._leaders[key]
        if not lead.done():
            lead.set_result(answer)
