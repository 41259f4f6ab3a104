"""Admin HTTP API: keys, audit and usage. Behind the ``admin`` permission like every route."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exc as sa_exc

from welip.api import OpenAIError, invalid_request
from welip.store import AuditStore, Database, KeyStore
from welip.trust import Trust

T = TypeVar("T")


class KeyCreate(BaseModel):
    """A new API key."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="Who or what the key is for.")
    role: str = Field(min_length=1, max_length=64, description="A role defined in the gateway config.")
    models: list[str] | None = Field(None, description="Narrow the role's models to these.")
    rpm: int | None = Field(None, ge=1, le=10_000_000, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, le=10_000_000_000, description="Tokens per minute.")
    token_budget: int | None = Field(None, ge=1, description="Tokens for the key's lifetime.")
    expires_in_s: int | None = Field(None, ge=1, le=10 * 365 * 86400, description="Lifetime in seconds.")


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a database call off the event loop; an unreachable database is a 503, not a 500."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except sa_exc.OperationalError:
        raise OpenAIError(
            503,
            "The database is unreachable; try again shortly.",
            type="server_error",
            code="database_unavailable",
            headers={"retry-after": "5"},
        ) from None


def build_admin_router(trust: Trust) -> APIRouter:
    """Routes under ``/admin``; the trust middleware has already required ``admin``."""
    router = APIRouter(prefix="/admin", tags=["admin"])

    def database() -> Database:
        if trust.database is None:
            raise OpenAIError(
                501,
                "This gateway has no database (enable auth or audit).",
                type="server_error",
                code="not_configured",
            )
        return trust.database

    @router.post("/keys", status_code=201, summary="Create an API key (shown once)")
    async def create_key(spec: KeyCreate) -> dict[str, Any]:
        if spec.role not in trust.config.auth.roles:
            known = ", ".join(sorted(trust.config.auth.roles))
            raise invalid_request(f"role `{spec.role}` is not one of: {known}.", param="role")
        expires_at = datetime.now(UTC) + timedelta(seconds=spec.expires_in_s) if spec.expires_in_s else None
        record, key = await _call(
            KeyStore(database()).create_key,
            name=spec.name,
            role=spec.role,
            models=spec.models,
            rpm=spec.rpm,
            tpm=spec.tpm,
            token_budget=spec.token_budget,
            expires_at=expires_at,
        )
        return {**record.public(), "key": key}

    @router.get("/keys", summary="List API keys (never the keys themselves)")
    async def list_keys(include_revoked: bool = False) -> dict[str, Any]:
        records = await _call(KeyStore(database()).list_keys, include_revoked=include_revoked)
        return {"object": "list", "data": [r.public() for r in records]}

    @router.delete("/keys/{key_id}", summary="Revoke an API key")
    async def revoke_key(key_id: str) -> dict[str, Any]:
        if not await _call(KeyStore(database()).revoke_key, key_id):
            raise OpenAIError(404, f"No active key `{key_id}`.", code="not_found", param="key_id")
        return {"id": key_id, "revoked": True}

    @router.get("/audit", summary="Query the audit log")
    async def audit(
        principal: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
        status: int | None = Query(None, ge=100, le=599, description="HTTP status of the answer."),
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = Query(100, ge=1, le=10_000),
    ) -> dict[str, Any]:
        rows = await _call(
            AuditStore(database()).query_audit,
            principal=principal,
            key_id=key_id,
            model=model,
            status=status,
            request_id=request_id,
            since=since,
            until=until,
            limit=limit,
        )
        return {"object": "list", "data": rows}

    @router.get("/usage", summary="Requests, errors and tokens per principal and model, by UTC day")
    async def usage(since: date | None = None, until: date | None = None) -> dict[str, Any]:
        rows = await _call(AuditStore(database()).usage, since=since, until=until)
        return {"object": "list", "data": rows}

    return router
