"""API keys in the metadata database: minted here, only their hash stored."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from welip.store._database import Database, as_utc, utcnow
from welip.store._schema import api_keys

KEY_PREFIX = "wlp_"


def hash_key(key: str) -> str:
    """The stored form of an API key.

    Keys carry 256 random bits, so a fast hash is enough: nobody brute-forces that
    space, and auth stays off the slow-hash path on every request.
    """
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored (never the key itself)."""

    id: str
    name: str
    key_prefix: str
    role: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    token_budget: int | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime | None = None) -> bool:
        """Neither revoked nor expired."""
        now = now or utcnow()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def public(self) -> dict[str, Any]:
        """JSON-ready view for lists and the admin API."""
        return {
            "id": self.id,
            "name": self.name,
            "key_prefix": self.key_prefix,
            "role": self.role,
            "models": self.models,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "token_budget": self.token_budget,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


class KeyStore:
    """The ``api_keys`` table: create, look up by hash, list and revoke keys."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    def create_key(
        self,
        *,
        name: str,
        role: str,
        models: Sequence[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        token_budget: int | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[KeyRecord, str]:
        """Mint a key; returns its record and the key, which is never stored or shown again."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {
            "id": "key_" + secrets.token_hex(8),
            "name": name,
            "key_hash": hash_key(key),
            "key_prefix": key[: len(KEY_PREFIX) + 6],
            "role": role,
            "models": list(models) if models is not None else None,
            "rpm": rpm,
            "tpm": tpm,
            "token_budget": token_budget,
            "created_at": utcnow(),
            "expires_at": expires_at,
            "revoked_at": None,
        }
        with self._engine.begin() as conn:
            conn.execute(api_keys.insert().values(**row))
        return _key_record(row), key

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key with this hash, usable or not."""
        with self._engine.connect() as conn:
            row = conn.execute(api_keys.select().where(api_keys.c.key_hash == key_hash)).mappings().first()
        return _key_record(dict(row)) if row else None

    def key_by_id(self, key_id: str) -> KeyRecord | None:
        """The key with this id, usable or not."""
        with self._engine.connect() as conn:
            row = conn.execute(api_keys.select().where(api_keys.c.id == key_id)).mappings().first()
        return _key_record(dict(row)) if row else None

    def list_keys(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        """All keys, newest first."""
        query = api_keys.select().order_by(api_keys.c.created_at.desc())
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self._engine.connect() as conn:
            return [_key_record(dict(r)) for r in conn.execute(query).mappings()]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False if no usable key has this id."""
        with self._engine.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return bool(result.rowcount)


def _key_record(row: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        key_prefix=row["key_prefix"],
        role=row["role"],
        models=row["models"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        token_budget=row["token_budget"],
        created_at=as_utc(row["created_at"]),  # type: ignore[arg-type]
        expires_at=as_utc(row["expires_at"]),
        revoked_at=as_utc(row["revoked_at"]),
    )
