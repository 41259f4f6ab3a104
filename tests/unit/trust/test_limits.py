"""Token buckets in memory (the Redis script is tested against real Redis in tests/integration)."""

from __future__ import annotations

import asyncio

from welip.trust import Bucket, MemoryRateLimiter


def test_admission_is_all_or_nothing_and_charges_go_into_debt() -> None:
    async def run() -> None:
        limiter = MemoryRateLimiter()
        buckets = [Bucket("requests", 3), Bucket("tokens", 100)]
        allowed = [(await limiter.admit("k", buckets, [1, 40])).allowed for _ in range(4)]
        assert allowed == [True, True, False, False]  # the third would overdraw tokens: nothing taken
        decision = await limiter.admit("k", buckets, [1, 20])
        assert decision.allowed and decision.remaining == {"requests": 0, "tokens": 0}
        await limiter.charge("k", buckets[1:], [30])
        refused = await limiter.admit("k", buckets, [0, 1])
        assert not refused.allowed and refused.denied_by == "tokens" and refused.remaining["tokens"] == -30
        assert 18 <= refused.retry_after_s <= 19.5  # 31 tokens at 100/min

    asyncio.run(run())


def test_budget_never_refills() -> None:
    async def run() -> None:
        limiter = MemoryRateLimiter()
        budget = [Bucket("budget", 10, period_ms=0)]
        assert (await limiter.admit("k", budget, [10])).allowed
        refused = await limiter.admit("k", budget, [1])
        assert not refused.allowed and refused.headers()["retry-after"] == "86400"

    asyncio.run(run())
