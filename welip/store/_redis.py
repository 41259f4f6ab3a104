"""The Redis connection (``WELIP_REDIS_URL``), shared by rate limits and the response cache.

``WELIP_REDIS_URL`` takes one of these forms:

- ``redis://[[user]:password@]host:6379/0``: one server.
- ``rediss://[[user]:password@]host:6380/0``: the same over TLS, the server's certificate
  and name always verified (TLS 1.3 at least), against the CA file in
  ``WELIP_REDIS_CA_FILE`` (a file mounted from a Secret) or ``?ssl_ca_certs=/path``,
  else the system's trust store.
- ``redis+sentinel://[[user]:password@]h1:26379,h2:26379,h3:26379/<service>[/<db>]``: the
  master of ``<service>`` as Redis Sentinel names it now, asked again whenever a connection
  to it is made, so a failover needs no restart. The password is the data nodes' one; add
  ``?sentinel_password=...`` when the sentinels ask for their own. ``rediss+sentinel://``
  speaks TLS to the sentinels and the master both, with the CA as for ``rediss://``.

A malformed URL is a ``ValueError`` naming what is wrong (the password never shown).
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:  # redis-py is imported where a client is made: commands that need none start faster
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
CA_FILE_ENV = "WELIP_REDIS_CA_FILE"
# What a sentinel URL's query may set; anything else is a typo to report, not to ignore.
_SENTINEL_QUERY = frozenset({"sentinel_password", "ssl_ca_certs"})
# Sentinel's own rule for master names is loose; these are the names a URL path can carry.
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL: where the sentinels are and which master to ask for."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    ca_file: str | None = None


def _redacted(url: str) -> str:
    """``url`` with its password replaced, fit for an error message or a log line."""
    url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"(sentinel_password=)[^&#]*", r"\1***", url)


def _host_port(item: str, url: str) -> tuple[str, int]:
    """One ``host[:port]`` (or ``[v6]:port``) of a sentinel URL's host list."""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"WELIP_REDIS_URL {_redacted(url)}: bad IPv6 sentinel address {item!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"WELIP_REDIS_URL {_redacted(url)}: a sentinel address without a host ({item!r})")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"WELIP_REDIS_URL {_redacted(url)}: bad sentinel port in {item!r}")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[[user]:password@]h1[:p1],h2[:p2]/<service>[/<db>][?query]``.

    Raises:
        ValueError: the URL is not of that form (which part is wrong is said).
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES or not sep:
        raise ValueError(f"WELIP_REDIS_URL {_redacted(url)}: a sentinel URL starts with redis+sentinel://")
    try:
        parts = urlsplit("x://" + rest)  # urlsplit cannot take a host list's ports: split it here
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        raise ValueError(f"WELIP_REDIS_URL {_redacted(url)}: {exc}") from None
    if parts.fragment:
        raise ValueError(f"WELIP_REDIS_URL {_redacted(url)}: a fragment (#...) has no meaning here")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    items = hostlist.split(",")
    if not hostlist or any(not item for item in items):
        raise ValueError(f"WELIP_REDIS_URL {_redacted(url)}: list the sentinels as host:port,host:port")
    sentinels = tuple(_host_port(item, url) for item in items)
    segments = [unquote(s) for s in parts.path.split("/")[1:]]
    if not segments or not segments[0] or len(segments) > 2:
        raise ValueError(
            f"WELIP_REDIS_URL {_redacted(url)}: the path must be /<service name>[/<db>], "
            "the master's name in the sentinels' configuration"
        )
    service_name = segments[0]
    if not _SERVICE_NAME.fullmatch(service_name):
        raise ValueError(f"WELIP_REDIS_URL {_redacted(url)}: bad service name {service_name!r}")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(
                f"WELIP_REDIS_URL {_redacted(url)}: the database must be a number, not {segments[1]!r}"
            )
        db = int(segments[1])
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - _SENTINEL_QUERY)
    if unknown:
        raise ValueError(
            f"WELIP_REDIS_URL {_redacted(url)}: unknown option(s) {', '.join(unknown)} "
            f"(a sentinel URL takes {', '.join(sorted(_SENTINEL_QUERY))})"
        )
    tls = scheme.lower() == "rediss+sentinel"
    ca_file = query.get("ssl_ca_certs", [None])[-1]
    if ca_file is not None and not tls:
        raise ValueError(f"WELIP_REDIS_URL {_redacted(url)}: ssl_ca_certs needs rediss+sentinel://")
    return SentinelURL(
        sentinels=sentinels,
        service_name=service_name,
        db=db,
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password", [None])[-1] or None,
        tls=tls,
        ca_file=ca_file or None,
    )


def _tls_options(url: str, in_url: str | None, from_env: str | None) -> dict[str, Any]:
    """redis-py's TLS arguments: verification on, TLS 1.3 at least, the one CA file named."""
    if in_url and from_env and in_url != from_env:
        raise ValueError(
            f"WELIP_REDIS_URL {_redacted(url)} names a CA file (ssl_ca_certs) and so does "
            f"{CA_FILE_ENV}: set one of them"
        )
    ca_file = in_url or from_env
    if ca_file is not None and not Path(ca_file).is_file():
        raise ValueError(
            f"Redis CA file {ca_file} (from {'the URL' if in_url else CA_FILE_ENV}) is not a file"
        )
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_min_version": ssl.TLSVersion.TLSv1_3}
    if ca_file is not None:
        options["ssl_ca_certs"] = ca_file
    return options


def _retry() -> Retry:
    # One more try, at once: a connection the failover broke reconnects (asking the
    # sentinels anew) within the same call; redis-py's default (10 tries, backoff up to
    # 1 s) would hold a request for seconds while the master is down.
    from redis.asyncio.retry import Retry
    from redis.backoff import ConstantBackoff

    return Retry(ConstantBackoff(0.05), 1)


def redis_from_url(url: str, *, ca_file: str | None = None, timeout_s: float = 2.0) -> Redis:
    """An asyncio Redis client for ``url`` (any form in this module's docstring).

    Args:
        url: the Redis URL.
        ca_file: a CA bundle for ``rediss://`` (``WELIP_REDIS_CA_FILE``); an error with a
            plain ``redis://`` URL, which would not use it.
        timeout_s: each connect and each reply, to a server or a sentinel, waits at most this
            long; with the one retry a call fails within about twice that.

    Raises:
        ValueError: a malformed URL, an option that turns certificate verification off, or a
            CA file that is not there.
    """
    from redis.asyncio import Redis
    from redis.asyncio.connection import parse_url
    from redis.asyncio.sentinel import Sentinel

    if not 0 < timeout_s <= 60:
        raise ValueError(f"timeout_s must be in (0, 60], not {timeout_s}")
    timeouts: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    scheme = url.partition("://")[0].lower()
    if scheme in SENTINEL_SCHEMES:
        target = parse_sentinel_url(url)
        if ca_file and not target.tls:
            raise ValueError(f"{CA_FILE_ENV} is set but WELIP_REDIS_URL is not TLS: use rediss+sentinel://")
        tls = {"ssl": True, **_tls_options(url, target.ca_file, ca_file)} if target.tls else {}
        sentinel = Sentinel(
            list(target.sentinels),
            sentinel_kwargs={**timeouts, **tls, "password": target.sentinel_password},
            **timeouts,
            **tls,
        )
        client: Redis = sentinel.master_for(
            target.service_name,
            db=target.db,
            username=target.username,
            password=target.password,
            retry=_retry(),
        )
        return client
    try:
        options = parse_url(url)
    except ValueError as exc:
        raise ValueError(
            f"WELIP_REDIS_URL {_redacted(url)}: {exc} (or redis+sentinel:// / rediss+sentinel://)"
        ) from None
    if str(options.get("ssl_cert_reqs", "required")).lower() not in ("required", "verifymode.cert_required"):
        raise ValueError(
            f"WELIP_REDIS_URL {_redacted(url)}: WeLIP keeps certificate verification on (ssl_cert_reqs)"
        )
    if options.get("ssl_check_hostname") is False:
        raise ValueError(
            f"WELIP_REDIS_URL {_redacted(url)}: WeLIP keeps host name checks on (ssl_check_hostname)"
        )
    extra: dict[str, Any] = {}
    if scheme == "rediss":
        extra = _tls_options(url, options.get("ssl_ca_certs"), ca_file)  # type: ignore[arg-type]
    elif ca_file or "ssl_ca_certs" in options:
        raise ValueError(
            f"a Redis CA file is set but WELIP_REDIS_URL {_redacted(url)} is not TLS: use rediss://"
        )
    # URL query options win over these keyword arguments in redis-py; the checks above
    # make sure none of them weakens verification.
    return Redis.from_url(url, **timeouts, retry=_retry(), **extra)


def redis_from_env(*, timeout_s: float = 2.0) -> Redis | None:
    """An asyncio Redis client for ``WELIP_REDIS_URL`` (CA from ``WELIP_REDIS_CA_FILE``), or None when unset.

    Raises:
        ValueError: see :func:`redis_from_url`.
    """
    url = os.environ.get("WELIP_REDIS_URL")
    if not url:
        return None
    return redis_from_url(url, ca_file=os.environ.get(CA_FILE_ENV) or None, timeout_s=timeout_s)
