"""The Redis connection (``WELIP_REDIS_URL``), shared by rate limits and the response cache."""

from __future__ import annotations

import os

from redis.asyncio import Redis


def redis_from_env(*, timeout_s: float = 2.0) -> Redis | None:
    """An asyncio Redis client for ``WELIP_REDIS_URL``, or None when it is unset."""
    url = os.environ.get("WELIP_REDIS_URL")
    if not url:
        return None
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
