"""WELIP_REDIS_URL's forms: what each connects to, and the clear error a bad one gets.

No server here: these look at the client redis-py was given (the servers are in
tests/integration/test_failover_redis.py).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from welip.store import redis_from_env
from welip.store._redis import SentinelURL, parse_sentinel_url, redis_from_url
from welip.trust._cache import RedisResponseCache
from welip.trust._limits import Bucket, RedisRateLimiter


def test_a_sentinel_url_names_every_sentinel_the_service_and_the_database() -> None:
    url = "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380,[fd00::3]/welip-redis/2?sentinel_password=x"
    assert parse_sentinel_url(url) == SentinelURL(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("fd00::3", 26379)),
        service_name="welip-redis",
        db=2,
        password="s3cret",
        sentinel_password="x",
    )


def test_the_client_asks_the_sentinels_for_the_services_master() -> None:
    client = redis_from_url("redis+sentinel://user:pw@h1:26379,h2:26380,h3:26381/mymaster", timeout_s=1.5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster" and pool.is_master
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("user", "pw", 0)
    assert kwargs["socket_timeout"] == 1.5
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380, 26381]
    # The data nodes' password is not sent to sentinels, which usually have none.
    assert sentinels[0].connection_pool.connection_kwargs.get("password") is None
    assert sentinels[0].connection_pool.connection_kwargs["socket_connect_timeout"] == 1.5


def test_tls_sentinels_verify_both_the_sentinels_and_the_master(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made")
    client = redis_from_url(f"rediss+sentinel://h1,h2/m?ssl_ca_certs={ca}")
    pool = client.connection_pool
    assert pool.connection_class is SentinelManagedSSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    assert pool.connection_kwargs["ssl_min_version"] is ssl.TLSVersion.TLSv1_3
    sentinel_pool = pool.sentinel_manager.sentinels[0].connection_pool
    assert sentinel_pool.connection_class is SSLConnection
    assert sentinel_pool.connection_kwargs["ssl_ca_certs"] == str(ca)


def test_rediss_takes_its_ca_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("mounted from a Secret")
    monkeypatch.setenv("WELIP_REDIS_URL", "rediss://:pw@redis.example:6380/1")
    monkeypatch.setenv("WELIP_REDIS_CA_FILE", str(ca))
    client = redis_from_env()
    assert client is not None
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is SSLConnection
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example", 6380, 1)
    assert kwargs["ssl_ca_certs"] == str(ca)
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_min_version"] is ssl.TLSVersion.TLSv1_3


def test_no_url_means_no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WELIP_REDIS_URL", raising=False)
    assert redis_from_env() is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", "must specify one of the following schemes"),
        ("redis://h:port/0", "Port could not be cast"),
        ("redis+sentinel://h1:26379/", "the path must be /<service name>[/<db>]"),
        ("redis+sentinel://h1/m/1/2", "the path must be /<service name>[/<db>]"),
        ("redis+sentinel:///m", "list the sentinels as host:port,host:port"),
        ("redis+sentinel://h1,,h2/m", "list the sentinels as host:port,host:port"),
        ("redis+sentinel://h1:0/m", "bad sentinel port in 'h1:0'"),
        ("redis+sentinel://h1:2637x/m", "bad sentinel port in 'h1:2637x'"),
        ("redis+sentinel://[fd00::1/m", "Invalid IPv6 URL"),
        ("redis+sentinel://[fd00::1]x:1/m", "bad IPv6 sentinel address"),
        ("redis+sentinel://:7/m", "a sentinel address without a host"),
        ("redis+sentinel://h1/m/zero", "the database must be a number, not 'zero'"),
        ("redis+sentinel://h1/m!/0", "bad service name 'm!'"),
        ("redis+sentinel://h1/m?service=m", "unknown option(s) service"),
        ("redis+sentinel://h1/m?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs rediss+sentinel://"),
        ("rediss://h:6380/0?ssl_cert_reqs=none", "keeps certificate verification on"),
        ("rediss://h:6380/0?ssl_check_hostname=false", "keeps host name checks on"),
        ("redis://h:6379/0?ssl_ca_certs=/ca.pem", "is not TLS: use rediss://"),
        (
            "rediss://h:6380/0?ssl_ca_certs=/no/such/ca.pem",
            "Redis CA file /no/such/ca.pem (from the URL) is not a file",
        ),
    ],
)
def test_a_bad_url_is_a_clear_error(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"WELIP_REDIS_URL|Redis CA file") as caught:
        redis_from_url(url)
    assert message in str(caught.value)


def test_errors_never_show_a_password() -> None:
    with pytest.raises(ValueError) as caught:
        redis_from_url("redis+sentinel://admin:hunter2@h1/m/x?sentinel_password=swordfish")
    assert "hunter2" not in str(caught.value) and "swordfish" not in str(caught.value)
    assert "admin:***@h1" in str(caught.value)


def test_a_ca_file_with_a_plain_url_is_refused_rather_than_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.setenv("WELIP_REDIS_CA_FILE", str(ca))
    for url in ("redis://h:6379/0", "redis+sentinel://h1/m"):
        monkeypatch.setenv("WELIP_REDIS_URL", url)
        with pytest.raises(ValueError, match="is not TLS"):
            redis_from_env()
    monkeypatch.setenv("WELIP_REDIS_URL", f"rediss://h:6380/0?ssl_ca_certs={tmp_path}/other.pem")
    with pytest.raises(ValueError, match="set one of them"):
        redis_from_env()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when this returns: nothing listens


def test_redis_down_the_limiter_fails_fast_and_the_cache_misses() -> None:
    """The limiter's error becomes the gateway's 503 (rate_limiter_unavailable); the cache misses, no 500."""

    async def run() -> tuple[float, bytes | None]:
        client = redis_from_url(f"redis://127.0.0.1:{_closed_port()}/0", timeout_s=1.0)
        limiter = RedisRateLimiter(client, "t")
        cache = RedisResponseCache(client, "t", ttl_s=60)
        start = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await limiter.admit("k", [Bucket("requests", 5)], [1])
        elapsed = time.monotonic() - start
        await cache.put("key", b"answer")  # no exception: the answer is just not stored
        cached = await cache.get("key")
        await client.aclose()
        return elapsed, cached

    elapsed, cached = asyncio.run(run())
    assert elapsed < 1.0  # one quick retry, not redis-py's ten with backoff
    assert cached is None
