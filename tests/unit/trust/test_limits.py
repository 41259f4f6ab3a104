"""Token buckets in memory (the Redis script is tested against real Redis in tests/integration)."""

from __future__ import annotations

import asyncio
import time

import pytest

from welip.trust import Bucket, MemoryRateLimiter
from welip.trust._limits import Decision, Refusals


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


def _refusal(denied_by: str, level: int, retry_after_s: float, capacity: int = 60) -> Decision:
    limits = {denied_by: capacity}
    return Decision(False, retry_after_s, {denied_by: level}, limits, {denied_by: 1.0}, denied_by)


def test_refusals_hold_a_caller_only_while_no_request_could_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    refusals = Refusals(hold_s=5)
    refusals.remember("rpm", _refusal("requests", 0, retry_after_s=30))
    refusals.remember("big-ask", _refusal("tokens", 500, retry_after_s=10))  # a smaller request may pass
    refusals.remember("in-debt", _refusal("tokens", -59, retry_after_s=90))  # 60 tokens/min: 60 s to 1 token
    refusals.remember("spent", _refusal("budget", 0, retry_after_s=86400))
    held = refusals.refused("rpm")
    assert held is not None and held.headers()["retry-after"] == "30"  # the real wait, not the hold
    assert refusals.refused("big-ask") is None
    assert {s for s in ("in-debt", "spent") if refusals.refused(s)} == {"in-debt", "spent"}
    refusals.refunded("rpm")  # requests are never given back
    refusals.refunded("in-debt")  # a request of theirs ended under its reservation
    assert refusals.refused("rpm") is not None and refusals.refused("in-debt") is None
    now[0] += 5  # the hold ends: the limiter decides again (raised limits take effect)
    assert [refusals.refused(s) for s in ("rpm", "spent")] == [None, None]


def test_refusals_are_bounded_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    refusals = Refusals(hold_s=5, max_entries=2)
    for subject in ("a", "b", "c"):
        refusals.remember(subject, _refusal("requests", 0, retry_after_s=1))
    assert [bool(refusals.refused(s)) for s in "abc"] == [True, True, False]
    now[0] += 1.5  # a and b have expired: room again
    refusals.remember("c", _refusal("requests", 0, retry_after_s=1))
    assert refusals.refused("c") is not None
    off = Refusals(hold_s=0)
    off.remember("a", _refusal("requests", 0, retry_after_s=30))
    assert off.refused("a") is None
