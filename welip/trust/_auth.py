"""Identity and access: API keys and OIDC/JWT bearer tokens, mapped onto roles.

Every request except the configured public paths carries ``Authorization: Bearer
<credential>``. A credential that starts with ``wlp_`` is a WeLIP API key, looked up
by its hash (cached for ``key_cache_s``, and kept while the database is down); any
other is verified as a JWT. The principal's role then decides the route families and
models it may use (:func:`authorize`); a model it may not use looks exactly like one
that does not exist.

Failed authentications are limited per client address (``max_auth_failures_per_minute``),
so a flood of guessed keys costs a bounded number of key look-ups.

A principal is named once, here (:attr:`Principal.id`): an API key by its id, an OIDC
caller by issuer and subject (:func:`oidc_principal_id`). Ownership (agent threads and
runs), limits and audit records are all kept under that id. A request of a service
whose role holds ``delegate`` may carry a caller token (:mod:`welip.trust._delegation`):
it is then its caller's request, with :attr:`Principal.via` naming the service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt

from welip.api import OpenAIError, model_not_found
from welip.store import KEY_PREFIX, Database, KeyRecord, KeyStore, hash_key
from welip.trust._config import ALL_PERMISSIONS, AuthConfig, OIDCConfig, RoleConfig
from welip.trust._delegation import CallerTokens, invalid_caller_token

logger = logging.getLogger("welip.gateway")

# Route families, by path prefix; the first match decides. Paths that match none
# (the OpenAPI spec, docs, unknown paths answered 404) need only a valid caller. A tuple
# admits a caller holding any of its permissions (the handler checks the one it needs).
RoutePermission = str | tuple[str, ...]
ROUTE_PERMISSIONS: tuple[tuple[str, RoutePermission], ...] = (
    ("/v1/chat/completions", "inference"),
    ("/v1/files", ("batch", "finetune_submit", "eval_submit")),  # by purpose: batch, fine-tune, evals
    ("/v1/batches", "batch"),
    ("/v1/completions", "inference"),
    ("/v1/models", "inference"),
    ("/v1/embeddings", "embeddings"),
    ("/admin", "admin"),
    ("/agents", "agents"),
    ("/threads", "agents"),
    ("/runs", "agents"),
    ("/store", "agents"),
    ("/eval", "eval_submit"),
    ("/finetune", "finetune_submit"),
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the subject limits and audit records are kept under."""

    id: str  # key id, or oidc_principal_id(issuer, sub)
    kind: str  # api_key | oidc | anonymous
    role: str | None
    permissions: frozenset[str]
    models: frozenset[str] | None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    token_budget: int | None = None
    key_id: str | None = None
    via: str | None = None  # the service (its principal id) that called on this caller's behalf

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ADMIN_KEY_ID = "admin-key"
"""The principal id of the bootstrap admin key (``auth.admin_key_env``)."""

MAX_PRINCIPAL_ID_CHARS = 256  # the audit log's and agent tables' principal columns


def oidc_principal_id(issuer: str, subject: str) -> str:
    """An OIDC caller's principal id: ``oidc:<issuer>|<subject>``, issuer and subject both.

    A subject is unique only within its issuer. ``%`` and ``|`` in the issuer are
    percent-encoded, so the first ``|`` always ends it and no two pairs share an id.
    """
    return "oidc:" + issuer.replace("%", "%25").replace("|", "%7C") + "|" + subject


ANONYMOUS = Principal(
    id="anonymous",
    kind="anonymous",
    role=None,
    permissions=frozenset(),
    models=frozenset(),
)
"""A caller nobody has authenticated (a public path's): no permission, no model."""

OPEN = Principal(
    id="anonymous",
    kind="anonymous",
    role=None,
    permissions=frozenset(ALL_PERMISSIONS),
    models=None,
)
"""Every caller where auth is off (``auth.enabled: false``), or where no trust layer is installed."""

# Client addresses one replica counts failed authentications for (least recently failed out).
_FAILURE_SOURCES = 10_000


def invalid_api_key(message: str) -> OpenAIError:
    """401 ``invalid_api_key``."""
    return OpenAIError(401, message, code="invalid_api_key", headers={"www-authenticate": "Bearer"})


def invalid_token(message: str) -> OpenAIError:
    """401 ``invalid_token``."""
    return OpenAIError(401, message, code="invalid_token", headers={"www-authenticate": "Bearer"})


def permission_denied(message: str) -> OpenAIError:
    """403 ``permission_denied``."""
    return OpenAIError(403, message, code="permission_denied")


def too_many_failures(retry_after_s: int) -> OpenAIError:
    """429 ``rate_limit_exceeded``: this address failed to authenticate too often."""
    return OpenAIError(
        429,
        f"Too many failed authentications from your address; retry after {retry_after_s} s.",
        type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after": str(retry_after_s)},
    )


class FailureBudget:
    """Failed authentications per client address: a token bucket of ``per_minute`` each.

    Only the most recent ``max_sources`` addresses are remembered; one pushed out starts
    afresh.
    """

    def __init__(self, per_minute: int, max_sources: int = _FAILURE_SOURCES) -> None:
        self._capacity = float(per_minute)
        self._per_s = per_minute / 60
        self._max_sources = max_sources
        self._sources: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def _tokens(self, source: str, now: float) -> float:
        entry = self._sources.get(source)
        if entry is None:
            return self._capacity
        tokens, when = entry
        return min(self._capacity, tokens + (now - when) * self._per_s)

    def retry_after_s(self, source: str) -> int | None:
        """Seconds until ``source`` may fail again, or None while it has failures left."""
        tokens = self._tokens(source, time.monotonic())
        if tokens >= 1:
            return None
        return max(1, math.ceil((1 - tokens) / self._per_s))

    def spend(self, source: str) -> None:
        """Count one failed authentication from ``source``."""
        now = time.monotonic()
        self._sources[source] = (max(0.0, self._tokens(source, now) - 1), now)
        self._sources.move_to_end(source)
        while len(self._sources) > self._max_sources:
            self._sources.popitem(last=False)


def _models(role: RoleConfig, narrowed: list[str] | None) -> frozenset[str] | None:
    role_models = None if "*" in role.models else frozenset(role.models)
    if narrowed is None:
        return role_models
    mine = frozenset(narrowed)
    return mine if role_models is None else mine & role_models


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`, or its refusal (:meth:`authenticate`)."""

    def __init__(self, config: AuthConfig, database: Database | None) -> None:
        self._config = config
        self._keys = KeyStore(database) if database is not None else None
        # Keys that exist (usable or not), least recently used first; a miss is never kept,
        # so guessed keys cannot push a valid one out.
        self._cache: OrderedDict[str, tuple[KeyRecord, float]] = OrderedDict()
        per_minute = config.max_auth_failures_per_minute
        self._failures = FailureBudget(per_minute) if per_minute is not None else None
        admin_key = os.environ.get(config.admin_key_env) if config.admin_key_env else None
        if config.admin_key_env and not admin_key:
            logger.warning("auth.admin_key_env names %s, which is unset", config.admin_key_env)
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._oidc = _OIDCVerifier(config.oidc) if config.oidc else None
        self.caller_tokens = CallerTokens.from_env(config.caller_token_secret_env)

    async def authenticate(
        self, authorization: str | None, source: str | None = None, caller_token: str | None = None
    ) -> Principal:
        """The caller presenting ``authorization``, from client address ``source`` (if known).

        With a ``caller_token`` the principal is the caller it names, if ``authorization``
        is a service whose role holds ``delegate`` and the token is valid (else 401): its
        API key is read again by id, so a revoked or expired key stops working. The caller
        then has the caller's models and limits and the service's route families.

        Raises 401 for a missing or wrong credential; 429 once ``source`` has failed
        ``max_auth_failures_per_minute`` times (then only a key this replica already
        knows, or the admin key, is still checked); 503 when the key store or the
        identity provider's keys cannot be reached.
        """
        if not authorization:
            raise invalid_api_key("You didn't provide an API key. Send it as `Authorization: Bearer <key>`.")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise invalid_api_key("The Authorization header must be `Bearer <key or token>`.")
        budget = self._failures if source is not None else None
        blocked_s = budget.retry_after_s(source) if budget is not None and source is not None else None
        try:
            if credential.startswith(KEY_PREFIX) or self._oidc is None:
                principal = await self._api_key(credential, blocked_s)
            else:
                if blocked_s is not None:
                    raise too_many_failures(blocked_s)
                principal = await self._oidc.verify(credential, self._config)
        except OpenAIError as exc:
            if exc.status_code == 401 and budget is not None and source is not None:
                budget.spend(source)
            raise
        # Not counted against the address: the service has authenticated, and a caller
        # whose key was revoked mid-run must not lock the service's replica out.
        return principal if caller_token is None else await self._delegated(principal, caller_token)

    async def _delegated(self, service: Principal, token: str) -> Principal:
        """The caller a caller token names, presented by ``service``; one 401 for every refusal."""
        if "delegate" not in service.permissions or self.caller_tokens is None:
            raise invalid_caller_token()
        caller = self.caller_tokens.verify(token)
        principal: Principal | None = None
        if caller.kind == "api_key" and caller.id == ADMIN_KEY_ID:
            principal = self._admin() if self._admin_hash is not None else None
        elif caller.kind == "api_key":
            record = await self._lookup("", key_id=caller.id)
            role = self._config.roles.get(record.role) if record is not None else None
            if record is not None and record.usable() and role is not None:
                principal = self._key_principal(record, role)
        elif caller.role is not None and caller.role in self._config.roles:
            role = self._config.roles[caller.role]
            principal = Principal(
                id=caller.id,
                kind="oidc",
                role=caller.role,
                permissions=frozenset(role.permissions),
                models=_models(role, None),
            )
        if principal is None:
            raise invalid_caller_token()
        # The routes are the service's to call (a caller may hold only `agents`); the models,
        # limits and audit row are the caller's.
        permissions = service.permissions - {"delegate"}
        return dataclasses.replace(principal, permissions=permissions, via=service.id)

    def _admin(self) -> Principal:
        return Principal(
            id=ADMIN_KEY_ID,
            kind="api_key",
            role="admin",
            permissions=frozenset(self._config.roles["admin"].permissions)
            if "admin" in self._config.roles
            else frozenset({"admin"}),
            models=None,
            key_id=ADMIN_KEY_ID,
        )

    async def _api_key(self, key: str, blocked_s: int | None = None) -> Principal:
        digest = hash_key(key)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return self._admin()
        if blocked_s is not None and digest not in self._cache:
            raise too_many_failures(blocked_s)  # before any look-up: a flood costs no query
        record = await self._lookup(digest)
        if record is None:
            raise invalid_api_key("Incorrect API key provided.")
        if record.revoked_at is not None:
            raise invalid_api_key(f"The API key {record.key_prefix}... has been revoked.")
        if not record.usable():
            raise invalid_api_key(f"The API key {record.key_prefix}... has expired.")
        role = self._config.roles.get(record.role)
        if role is None:
            raise permission_denied(f"The key's role `{record.role}` is not defined on this gateway.")
        return self._key_principal(record, role)

    def _key_principal(self, record: KeyRecord, role: RoleConfig) -> Principal:
        return Principal(
            id=record.id,
            kind="api_key",
            role=record.role,
            permissions=frozenset(role.permissions),
            models=_models(role, record.models),
            rpm=record.rpm,
            tpm=record.tpm,
            token_budget=record.token_budget,
            key_id=record.id,
        )

    async def _lookup(self, digest: str, *, key_id: str | None = None) -> KeyRecord | None:
        """The key whose hash is ``digest`` (with ``key_id``: the key with that id), cached."""
        cache_key = digest if key_id is None else "id:" + key_id  # never a hash: those are hex
        now = time.monotonic()
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            if now - cached[1] < self._config.key_cache_s:
                return cached[0]
        if self._keys is None:
            return None
        try:
            if key_id is not None:
                record = await asyncio.to_thread(self._keys.key_by_id, key_id)
            else:
                record = await asyncio.to_thread(self._keys.key_by_hash, digest)
        except Exception as exc:  # noqa: BLE001 - any database failure
            if cached is not None:
                logger.warning("key lookup failed (%s); using the cached key", type(exc).__name__)
                return cached[0]
            raise OpenAIError(
                503,
                "The key store is unavailable; try again shortly.",
                type="server_error",
                code="auth_unavailable",
                headers={"retry-after": "5"},
            ) from None
        if record is None:
            self._cache.pop(cache_key, None)  # deleted since it was cached
            return None
        self._cache[cache_key] = (record, now)
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self._config.key_cache_max_entries:
            self._cache.popitem(last=False)
        return record


class _OIDCVerifier:
    def __init__(self, config: OIDCConfig) -> None:
        self._config = config
        self._jwks = (
            jwt.PyJWKClient(config.jwks_url, cache_keys=True, lifespan=int(config.jwks_cache_s))
            if config.jwks_url
            else None
        )
        pem = os.environ.get(config.public_key_env, "") if config.public_key_env else ""
        if config.public_key_env and not pem:
            logger.warning("oidc.public_key_env names %s, which is unset", config.public_key_env)
        self._static_key = pem or None

    async def verify(self, token: str, auth: AuthConfig) -> Principal:
        config = self._config
        try:
            if self._jwks is not None:
                # PyJWKClient fetches over blocking HTTP on a cache miss.
                key: Any = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            elif self._static_key is not None:
                key = self._static_key
            else:
                raise invalid_token("No key is configured to verify bearer tokens.")
            claims = jwt.decode(
                token,
                key,
                algorithms=config.algorithms,
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            # The detail names the identity provider's address: for the log, not the caller.
            logger.warning("JWKS fetch from %s failed: %s", config.jwks_url, exc)
            raise OpenAIError(
                503,
                "The identity provider's signing keys are unavailable; try again shortly.",
                type="server_error",
                code="auth_unavailable",
                headers={"retry-after": "5"},
            ) from None
        except jwt.PyJWKClientError as exc:
            logger.info("bearer token's signing key not found: %s", exc)
            raise invalid_token("The bearer token's signing key could not be found.") from None
        except jwt.PyJWTError as exc:
            raise invalid_token(f"The bearer token is not valid: {exc}") from None
        subject = claims.get(config.principal_claim)
        if not isinstance(subject, str) or not subject:
            raise invalid_token(f"The bearer token has no `{config.principal_claim}` claim.")
        principal_id = oidc_principal_id(config.issuer, subject)
        if len(principal_id) > MAX_PRINCIPAL_ID_CHARS:
            raise invalid_token(
                f"The bearer token's issuer and `{config.principal_claim}` together are longer than "
                f"{MAX_PRINCIPAL_ID_CHARS - len('oidc:|')} characters."
            )
        groups = claims.get(config.roles_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        role_name = next((r for g, r in config.role_mapping.items() if g in groups), config.default_role)
        if role_name is None:
            raise permission_denied("The bearer token's groups map to no WeLIP role.")
        role = auth.roles[role_name]
        return Principal(
            id=principal_id,
            kind="oidc",
            role=role_name,
            permissions=frozenset(role.permissions),
            models=_models(role, None),
        )


def authorize(principal: Principal, permission: RoutePermission | None, model: str | None = None) -> None:
    """Raise unless the principal may call this route on this model.

    A route family it may not call (holding none of a tuple's permissions) is 403
    ``permission_denied``; a model it may not use is 404 ``model_not_found``, word for
    word what a model that does not exist gets, so that the answer tells nobody which
    models exist.
    """
    if permission is not None:
        needed = (permission,) if isinstance(permission, str) else permission
        if principal.permissions.isdisjoint(needed):
            raise permission_denied(f"Your role `{principal.role}` may not use {' or '.join(needed)} routes.")
    if model is not None and not principal.may_use(model):
        raise model_not_found(model)


def route_permission(path: str) -> RoutePermission | None:
    """The permission a path needs, or None for any authenticated caller."""
    for prefix, permission in ROUTE_PERMISSIONS:
        if path == prefix or path.startswith(prefix + "/"):
            return permission
    return None
