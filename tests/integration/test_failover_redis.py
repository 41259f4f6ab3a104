"""Redis Sentinel failover and TLS on real servers, through WeLIP's own limiter and cache (no Ray).

A master (56379), its replica (56380) and three sentinels (56381-56383) on loopback; the
trust layer is built as the gateway builds it (``redis_from_env`` with a
``redis+sentinel://`` URL). The master is SIGKILLed under load; the sentinels promote the
replica in a few seconds. Measured and written to ``build/failover-redis.json``: the
window in which the limiter answered 503 (and how many), and how many admissions the
new master never counted (what a failover can over-admit).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from tests.redis_servers import (
    HOST,
    REPLICA_PORT,
    TLS_PORT,
    Certificates,
    SentinelGroup,
    make_certificates,
    sentinel_group,
    tls_server,
)
from welip.api import OpenAIError
from welip.store import redis_from_env
from welip.trust import Admission, Principal, RequestContext, Trust, TrustConfig
from welip.trust._limits import Bucket

pytestmark = pytest.mark.integration

PREFIX = "welip-failover"
REPORT = Path(__file__).resolve().parents[2] / "build" / "failover-redis.json"
TIMEOUT_S = 2.0  # redis_from_env's default: what the gateway runs with
# A call makes at most two tries (redis_from_url's one retry), each bounded by the timeout:
# longer than this is a hang.
CALL_BOUND_S = 2 * TIMEOUT_S + 1
METERED = "metered"
BIG = 10**9  # a lifetime budget never reached: every admission stays counted in Redis
LOAD_BEFORE_KILL_S = 1.0
LOAD_AFTER_SWITCH_S = 1.0


@dataclass(frozen=True)
class Call:
    """One call of the load: when it started and ended (monotonic s), and what came back."""

    worker: str
    start: float
    end: float
    outcome: str  # allowed | refused | unavailable (503) | hit | miss | error:<type> | hang


def _capped() -> RequestContext:
    """An agent run of a caller allowed 1 request a minute: refused for a minute once it has run."""
    principal = Principal(
        id="capped", kind="api_key", role="user", permissions=frozenset({"agents"}), models=None, rpm=1
    )
    return RequestContext(method="POST", route="/threads/t/runs/wait", request_id="r", principal=principal)


async def _gateway_admission(trust: Trust) -> str:
    try:
        admitted = await trust.admit_run(_capped(), "assistant")
    except OpenAIError as exc:
        if exc.status_code == 429:
            return "refused"
        if exc.status_code == 503 and exc.headers.get("retry-after"):
            return "unavailable"
        raise
    assert isinstance(admitted, Admission)
    return "allowed"


async def _metered(trust: Trust) -> str:
    decision = await trust.limiter.admit(METERED, [Bucket("budget", BIG, period_ms=0)], [1])
    return "allowed" if decision.allowed else "refused"


async def _cached(trust: Trust) -> str:
    assert trust.cache is not None
    return "hit" if await trust.cache.get("answer") == b"42" else "miss"


async def _worker(name: str, call: Callable[[], Awaitable[str]], until: list[float], log: list[Call]) -> None:
    """Call until ``until[0]`` and until 3 calls have started after it was set (a call that
    began before the switch may wait out its timeout: what comes after still gets seen)."""
    calls_after = 0
    while time.monotonic() < until[0] or calls_after < 3:
        start = time.monotonic()
        calls_after += start > until[0] - LOAD_AFTER_SWITCH_S
        try:
            outcome = await asyncio.wait_for(call(), CALL_BOUND_S + 2)
        except TimeoutError:
            outcome = "hang"
        except redis.exceptions.RedisError:
            outcome = "unavailable"  # what Trust answers 503 for (the gateway calls below show it)
        except Exception as exc:  # noqa: BLE001 - anything else would be the gateway's 500
            outcome = f"error:{type(exc).__name__}"
        log.append(Call(name, start, time.monotonic(), outcome))
        await asyncio.sleep(0.005)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path / "redis") as servers:
        yield servers


@pytest.mark.parametrize("failure", ["killed", "frozen"])
def test_limits_and_cache_hold_across_a_sentinel_failover(
    failure: str, group: SentinelGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master dies (SIGKILL: connections refused at once) or hangs (SIGSTOP: every call waits
    out its timeout) under load; the sentinels promote the replica."""
    monkeypatch.setenv("WELIP_REDIS_URL", group.url)
    config = TrustConfig(limits={"redis_prefix": PREFIX, "refusal_memory_s": 0}, cache={"enabled": True})

    async def run() -> dict[str, Any]:
        client = redis_from_env()
        assert client is not None
        trust = Trust(config, database=None, redis=client)  # the gateway's limiter and cache
        assert await _gateway_admission(trust) == "allowed"
        assert await _gateway_admission(trust) == "refused"
        assert trust.cache is not None
        await trust.cache.put("answer", b"42")
        assert await _cached(trust) == "hit"

        log: list[Call] = []
        until = [float("inf")]
        workers = [
            asyncio.create_task(_worker("metered-1", lambda: _metered(trust), until, log)),
            asyncio.create_task(_worker("metered-2", lambda: _metered(trust), until, log)),
            asyncio.create_task(_worker("gateway", lambda: _gateway_admission(trust), until, log)),
            asyncio.create_task(_worker("cache", lambda: _cached(trust), until, log)),
        ]
        await asyncio.sleep(LOAD_BEFORE_KILL_S)
        killed_at = time.monotonic()
        group.master.kill() if failure == "killed" else group.master.freeze()
        deadline = killed_at + 30
        while await asyncio.to_thread(group.master_port) != REPLICA_PORT:
            assert time.monotonic() < deadline, "the sentinels did not promote the replica in 30 s"
            await asyncio.sleep(0.05)
        switched_at = time.monotonic()
        until[0] = switched_at + LOAD_AFTER_SWITCH_S
        await asyncio.gather(*workers)
        group.master.kill()  # a frozen one too, before it wakes as a second master

        # What the new master counted against what the clients were told: the difference
        # is admissions the old master took and never passed on.
        level = await client.hget(f"{PREFIX}:limit:{METERED}:budget", "v")
        counted = BIG - round(float(level))
        await client.aclose()
        return {"log": log, "killed_at": killed_at, "switched_at": switched_at, "counted": counted}

    result = asyncio.run(run())
    log: list[Call] = result["log"]
    killed_at, switched_at = result["killed_at"], result["switched_at"]

    assert not [c for c in log if c.outcome.startswith("error") or c.outcome == "hang"]
    slowest = max(c.end - c.start for c in log)
    assert slowest <= CALL_BOUND_S
    # The caller over its limit before the failover is refused throughout and after it.
    over_limit_admitted = sum(c.worker == "gateway" and c.outcome == "allowed" for c in log)
    assert over_limit_admitted == 0
    after = [c for c in log if c.start > switched_at]
    assert {c.outcome for c in after if c.worker == "gateway"} == {"refused"}
    assert {c.outcome for c in after if c.worker == "cache"} == {"hit"}
    assert {c.outcome for c in after if c.worker.startswith("metered")} == {"allowed"}

    unavailable = [c for c in log if c.outcome == "unavailable"]
    metered = [c for c in log if c.worker.startswith("metered")]
    admitted = sum(c.outcome == "allowed" for c in metered)
    over_admitted = max(0, admitted - result["counted"])
    last_second = sum(c.outcome == "allowed" and killed_at - 1 <= c.end <= killed_at for c in metered)
    report = {
        "sentinel_switch_s": round(switched_at - killed_at, 3),
        "limiter_unavailable_s": round(max((c.end for c in unavailable), default=killed_at) - killed_at, 3),
        "answered_503": sum(c.worker != "cache" for c in unavailable),
        "cache_misses_during_failover": sum(c.worker == "cache" and c.outcome == "miss" for c in log),
        "calls": len(log),
        "slowest_call_s": round(slowest, 3),
        "metered_admitted": admitted,
        "metered_counted_by_new_master": result["counted"],
        "over_admitted": over_admitted,
        "admitted_in_last_second_before_kill": last_second,
        "over_limit_caller_admitted": over_limit_admitted,
        "down_after_ms": 1000,
    }
    REPORT.parent.mkdir(exist_ok=True)
    reports = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    reports[failure] = report
    REPORT.write_text(json.dumps(reports, indent=2) + "\n")
    print(json.dumps(report))
    # The documented bound: a failover loses at most the admissions the old master had not
    # yet replicated, a fraction of the last second's.
    assert over_admitted <= last_second


# -- TLS ----------------------------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


def _connect(monkeypatch: pytest.MonkeyPatch, url: str, ca: Path) -> str:
    """PING through a client from ``redis_from_env``: "PONG", or the error's text."""
    monkeypatch.setenv("WELIP_REDIS_URL", url)
    monkeypatch.setenv("WELIP_REDIS_CA_FILE", str(ca))

    async def ping() -> str:
        client = redis_from_env()
        assert client is not None
        try:
            return "PONG" if await client.ping() else "no"
        except redis.exceptions.ConnectionError as exc:
            return str(exc)
        finally:
            await client.aclose()

    return asyncio.run(asyncio.wait_for(ping(), CALL_BOUND_S))


async def _admits_one_of_a_limit_of_one(client: Any) -> bool:
    """The gateway's limiter over ``client``: a limit of 1 admits the first request only."""
    trust = Trust(TrustConfig(limits={"redis_prefix": PREFIX}), database=None, redis=client)
    decision = await trust.limiter.admit("tls", [Bucket("requests", 1)], [1])
    again = await trust.limiter.admit("tls", [Bucket("requests", 1)], [1])
    await client.aclose()
    return decision.allowed and not again.allowed


def test_redis_over_tls_verifies_the_servers_certificate(
    certs: Certificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tls_server(tmp_path / "tls", certs):
        url = f"rediss://{HOST}:{TLS_PORT}/0"
        assert _connect(monkeypatch, url, certs.ca) == "PONG"
        # The limiter works over it as over plain Redis.
        client = redis_from_env()
        assert client is not None
        assert asyncio.run(_admits_one_of_a_limit_of_one(client))
        # A server whose certificate another CA signed, and a name the certificate does not hold.
        assert "certificate verify failed" in _connect(monkeypatch, url, certs.other_ca)
        wrong_name = _connect(monkeypatch, f"rediss://localhost:{TLS_PORT}/0", certs.ca)
        assert "certificate verify failed" in wrong_name and "localhost" in wrong_name


def test_a_redis_that_offers_only_tls_1_2_is_refused(
    certs: Certificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tls_server(tmp_path / "tls12", certs, port=TLS_PORT + 1, protocols="TLSv1.2"):
        refused = _connect(monkeypatch, f"rediss://{HOST}:{TLS_PORT + 1}/0", certs.ca)
    assert "PROTOCOL_VERSION" in refused  # WeLIP asks for TLS 1.3 at least


def test_sentinels_and_master_over_tls(
    certs: Certificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rediss+sentinel://``: the sentinels and the master they name both verified under the CA."""
    with sentinel_group(tmp_path / "redis-tls", certs) as tls_group:
        assert tls_group.url.startswith("rediss+sentinel://")
        assert _connect(monkeypatch, tls_group.url, certs.ca) == "PONG"
        client = redis_from_env()
        assert client is not None
        assert asyncio.run(_admits_one_of_a_limit_of_one(client))
        refused = _connect(monkeypatch, tls_group.url, certs.other_ca)
        assert "No master found" in refused and "certificate verify failed" in refused
