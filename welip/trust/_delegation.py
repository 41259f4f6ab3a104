"""Caller tokens: a service (the agents app) calls the gateway on behalf of the caller of a run.

The agents app mints one token per run for the principal that started it (HS256 with the
secret in the environment variable ``auth.caller_token_secret_env`` names, valid for the
run's timeout, never the caller's own key); the run's LLM and embeddings calls carry it in
the :data:`CALLER_TOKEN_HEADER` header beside the service's own key. The gateway accepts
it only on a request that itself authenticates as a principal holding the ``delegate``
permission: the request is then the caller's, for grants, limits and audit, with
:attr:`Principal.via` naming the service.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jwt

from welip.api import OpenAIError

if TYPE_CHECKING:
    from welip.trust._auth import Principal

CALLER_TOKEN_HEADER = "x-welip-caller-token"  # nosec B105 # a header name, not a secret
"""The request header a caller token travels in."""

_ISSUER = "welip-agents"
_AUDIENCE = "welip-gateway-delegation"  # never an identity provider's audience
_ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
MAX_TTL_S = 86_400  # run_timeout_s is at most a day
_LEEWAY_S = 30


def invalid_caller_token() -> OpenAIError:
    """401 ``invalid_token``, one message for every reason (no oracle)."""
    return OpenAIError(
        401, "The caller token is not valid.", code="invalid_token", headers={"www-authenticate": "Bearer"}
    )


@dataclass(frozen=True)
class Caller:
    """Who a verified caller token names."""

    id: str  # Principal.id
    kind: str  # api_key | oidc
    role: str | None


class CallerTokens:
    """Mints and verifies caller tokens with one shared secret."""

    def __init__(self, secret: str) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"the caller token secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    @classmethod
    def from_env(cls, name: str | None) -> CallerTokens | None:
        """The tokens signed with the secret in environment variable ``name``; None when unset or empty."""
        secret = os.environ.get(name, "") if name else ""
        return cls(secret) if secret else None

    def mint(self, principal: Principal, ttl_s: float) -> str:
        """A token naming ``principal``, valid for ``ttl_s`` seconds (at most a day)."""
        if principal.kind not in ("api_key", "oidc"):
            raise ValueError(f"no caller token for a {principal.kind} principal")
        now = int(time.time())
        claims = {
            "iss": _ISSUER,
            "aud": _AUDIENCE,
            "sub": principal.id,
            "welip_kind": principal.kind,
            "welip_role": principal.role,
            "iat": now,
            "exp": now + min(MAX_TTL_S, max(1, math.ceil(ttl_s))),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str) -> Caller:
        """The caller a token names; 401 ``invalid_token`` unless this secret signed it and it is valid."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                audience=_AUDIENCE,
                issuer=_ISSUER,
                leeway=_LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.PyJWTError:
            raise invalid_caller_token() from None
        subject, kind, role = claims.get("sub"), claims.get("welip_kind"), claims.get("welip_role")
        lifetime = claims["exp"] - claims["iat"] if _numbers(claims["exp"], claims["iat"]) else None
        if (
            not isinstance(subject, str)
            or not subject
            or kind not in ("api_key", "oidc")
            or not (role is None or isinstance(role, str))
            or lifetime is None
            or lifetime > MAX_TTL_S
        ):
            raise invalid_caller_token()
        return Caller(id=subject, kind=kind, role=role)


def _numbers(*values: object) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
