"""Rate limits: token buckets per key, exact across gateway replicas through Redis.

A key's limits are buckets that refill continuously: ``rpm`` requests and ``tpm``
tokens per minute, and an optional lifetime ``token_budget`` that never refills.
Admission takes one request and the prompt's tokens from every bucket at once or
from none (one Lua script in Redis, so replicas never race); after the answer the
token buckets are charged the difference to the real usage, which may leave them in
debt until they refill. Without Redis the same buckets live in the replica's memory:
limits then hold per replica, not per cluster.

Redis unreachable (an outage, or a Sentinel failover until the sentinels have promoted a
replica and the client has asked them again), :meth:`RedisRateLimiter.admit` raises and
the gateway answers 503 ``rate_limiter_unavailable`` with ``Retry-After``: nothing is
admitted unmetered. The promoted replica holds the counts as replicated when the master
failed: admissions the old master had not yet passed on (its replication lag,
milliseconds on a healthy link) are forgotten, so a key may be admitted that many extra
requests; never more than it was admitted in that last moment.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

MINUTE_MS = 60_000.0


@dataclass(frozen=True)
class Bucket:
    """One limit: ``capacity`` units, refilled at ``capacity`` per ``period_ms`` (0: never)."""

    name: str  # requests | tokens | budget
    capacity: int
    period_ms: float = MINUTE_MS

    @property
    def refill_per_ms(self) -> float:
        return self.capacity / self.period_ms if self.period_ms else 0.0


@dataclass(frozen=True)
class Decision:
    """The outcome of an admission: allowed or not, and what to tell the client."""

    allowed: bool
    retry_after_s: float
    remaining: dict[str, int]
    limits: dict[str, int]
    reset_s: dict[str, float]
    denied_by: str | None = None

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers (and ``Retry-After`` when refused)."""
        headers: dict[str, str] = {}
        for name in ("requests", "tokens"):
            if name in self.limits:
                headers[f"x-ratelimit-limit-{name}"] = str(self.limits[name])
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, self.remaining[name]))
                headers[f"x-ratelimit-reset-{name}"] = f"{self.reset_s[name]:.3f}s"
        if not self.allowed:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


class Refusals:
    """A replica's memory of the callers it just refused for a limit that no request can pass now.

    Refused for requests per minute, or with no token left in its tokens-per-minute bucket
    or budget, a caller's next request would be refused too, whatever it asks: for up to
    ``hold_s`` (and no longer than the limit needs to admit one more) the replica answers
    it 429 from here, before its prompt is guarded or tokenized and without asking Redis.
    A token refusal is forgotten when a request of the caller's gives reserved tokens back
    on this replica. Bounded: at most ``max_entries`` callers are remembered at once.
    """

    def __init__(self, hold_s: float, max_entries: int = 65_536) -> None:
        self.hold_s = hold_s
        self.max_entries = max_entries
        # subject -> (answered from here until, Retry-After counts down to, the refusal)
        self._held: dict[str, tuple[float, float, Decision]] = {}

    def remember(self, subject: str, decision: Decision) -> None:
        """Note a refusal if no request of ``subject``'s could be admitted for a while."""
        name = decision.denied_by
        if not self.hold_s or decision.allowed or name is None:
            return
        level = decision.remaining.get(name, 0)
        if name == "requests":
            wait_s = decision.retry_after_s
        elif level > 0:
            return  # a smaller request may still pass
        elif name == "tokens":
            wait_s = (1 - level) * 60 / max(1, decision.limits.get(name, 1))
        else:
            wait_s = decision.retry_after_s  # a budget never refills: until an admin raises it
        now = time.monotonic()
        if len(self._held) >= self.max_entries:
            for key in [k for k, (until, _, _) in self._held.items() if until <= now]:
                del self._held[key]
            if len(self._held) >= self.max_entries:
                return
        self._held[subject] = (now + min(wait_s, self.hold_s), now + wait_s, decision)

    def refunded(self, subject: str) -> None:
        """Forget a token refusal of ``subject``'s: a request of theirs gave reserved tokens back.

        (A refund on another replica is not seen here: it waits for the hold to end.)
        """
        held = self._held.get(subject)
        if held is not None and held[2].denied_by != "requests":
            del self._held[subject]

    def refused(self, subject: str) -> Decision | None:
        """The refusal still standing for ``subject``, its Retry-After counted from now."""
        held = self._held.get(subject)
        if held is None:
            return None
        until, retry_at, decision = held
        now = time.monotonic()
        if until <= now:
            del self._held[subject]
            return None
        return Decision(
            False, retry_at - now, decision.remaining, decision.limits, decision.reset_s, decision.denied_by
        )


class RateLimiter(Protocol):
    """Where buckets live: Redis (exact across replicas) or this process."""

    async def admit(self, subject: str, buckets: list[Bucket], costs: list[int]) -> Decision:
        """Take ``costs`` from every bucket, or from none if one lacks them."""
        ...

    async def charge(self, subject: str, buckets: list[Bucket], amounts: list[int]) -> None:
        """Add (or refund, if negative) usage after the fact; buckets may go into debt."""
        ...


# KEYS: one hash per bucket. ARGV: n, then per bucket capacity, refill_per_ms, cost,
# then mode (1: admit all-or-nothing, 0: charge unconditionally). Time is Redis's own,
# so every replica sees one clock.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = tonumber(ARGV[1])
local admit = tonumber(ARGV[2 + 3 * n]) == 1
local levels = {}
local wait = 0
local never = false
local denied = 0
for i = 1, n do
  local cap = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'v', 'ts')
  local level = tonumber(state[1])
  local ts = tonumber(state[2])
  if level == nil then level = cap; ts = now end
  level = math.min(cap, level + (now - ts) * rate)
  levels[i] = level
  if admit and cost > 0 and level < cost then
    if denied == 0 then denied = i end
    if rate > 0 then wait = math.max(wait, (cost - level) / rate) else never = true end
  end
end
local out = {}
for i = 1, n do
  local cap = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local level = levels[i]
  if denied == 0 then
    level = level - cost
    redis.call('HSET', KEYS[i], 'v', tostring(level), 'ts', tostring(now))
    if rate > 0 then redis.call('PEXPIRE', KEYS[i], math.ceil(cap / rate) + 60000) end
  end
  out[i] = tostring(level)
end
if never then wait = -1 end
return {denied, tostring(wait), out}
"""


def _decision(buckets: list[Bucket], denied: int, wait_ms: float, levels: list[float]) -> Decision:
    remaining = {b.name: math.floor(level) for b, level in zip(buckets, levels, strict=True)}
    reset_s = {
        b.name: (max(0.0, b.capacity - level) / b.refill_per_ms / 1000 if b.refill_per_ms else 0.0)
        for b, level in zip(buckets, levels, strict=True)
    }
    limits = {b.name: b.capacity for b in buckets}
    if denied:
        never = wait_ms < 0
        return Decision(
            allowed=False,
            retry_after_s=86400.0 if never else wait_ms / 1000,
            remaining=remaining,
            limits=limits,
            reset_s=reset_s,
            denied_by=buckets[denied - 1].name,
        )
    return Decision(True, 0.0, remaining, limits, reset_s)


class RedisRateLimiter:
    """Buckets in Redis: one atomic script per admission, shared by every replica."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_LUA)

    def _keys(self, subject: str, buckets: list[Bucket]) -> list[str]:
        return [f"{self._prefix}:limit:{subject}:{b.name}" for b in buckets]

    async def _run(self, subject: str, buckets: list[Bucket], costs: list[int], admit: bool) -> Decision:
        args: list[Any] = [len(buckets)]
        for bucket, cost in zip(buckets, costs, strict=True):
            args += [bucket.capacity, repr(bucket.refill_per_ms), cost]
        args.append(1 if admit else 0)
        denied, wait, levels = await self._script(keys=self._keys(subject, buckets), args=args)
        return _decision(buckets, int(denied), float(wait), [float(v) for v in levels])

    async def admit(self, subject: str, buckets: list[Bucket], costs: list[int]) -> Decision:
        return await self._run(subject, buckets, costs, admit=True)

    async def charge(self, subject: str, buckets: list[Bucket], amounts: list[int]) -> None:
        await self._run(subject, buckets, amounts, admit=False)


class MemoryRateLimiter:
    """The same buckets in this process: limits per replica (no Redis configured)."""

    def __init__(self) -> None:
        # Single event loop, no await inside _apply: each admission is atomic.
        self._state: dict[str, tuple[float, float]] = {}

    def _apply(self, subject: str, buckets: list[Bucket], costs: list[int], admit: bool) -> Decision:
        now = time.monotonic() * 1000
        keys = [f"{subject}:{b.name}" for b in buckets]
        levels = []
        denied, wait, never = 0, 0.0, False
        for i, (key, bucket, cost) in enumerate(zip(keys, buckets, costs, strict=True), start=1):
            level, ts = self._state.get(key, (float(bucket.capacity), now))
            level = min(bucket.capacity, level + (now - ts) * bucket.refill_per_ms)
            levels.append(level)
            if admit and cost > 0 and level < cost:
                denied = denied or i
                if bucket.refill_per_ms:
                    wait = max(wait, (cost - level) / bucket.refill_per_ms)
                else:
                    never = True
        if not denied:
            for j, (key, cost) in enumerate(zip(keys, costs, strict=True)):
                levels[j] -= cost
                self._state[key] = (levels[j], now)
        return _decision(buckets, denied, -1.0 if never else wait, levels)

    async def admit(self, subject: str, buckets: list[Bucket], costs: list[int]) -> Decision:
        return self._apply(subject, buckets, costs, admit=True)

    async def charge(self, subject: str, buckets: list[Bucket], amounts: list[int]) -> None:
        self._apply(subject, buckets, amounts, admit=False)
