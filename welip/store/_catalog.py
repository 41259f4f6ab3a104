"""The serving catalog in the metadata database: registered LoRA adapters and model aliases."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from welip.store._database import Database, as_utc, utcnow
from welip.store._schema import adapters, model_aliases


@dataclass(frozen=True, kw_only=True)
class AdapterRecord:
    """A registered LoRA adapter version: a row of ``adapters``."""

    id: str
    """The model id clients send: ``<name>-v<version>``."""
    name: str
    version: int
    base_model_id: str
    uri: str
    """The adapter's folder: a local path or an ``s3://`` URL."""
    kind: str
    """``sft`` or ``grpo``."""
    mlflow_run_id: str | None
    lineage: dict[str, Any]
    """Base model, dataset and config hashes, commit, MLflow model version (free-form JSON)."""
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """JSON-ready view (columns in table order, time as ISO text)."""
        return {**asdict(self), "created_at": self.created_at.isoformat()}


@dataclass(frozen=True, kw_only=True)
class AliasRecord:
    """A name the gateway routes to another model: a row of ``model_aliases``."""

    alias: str
    target: str
    """A served model id or an adapter id."""
    previous: str | None
    """The target before the last switch."""
    updated_at: datetime
    updated_by: str | None
    decision: dict[str, Any] | None
    """The promotion gate that allowed the switch, as recorded (JSON), if any."""

    def public(self) -> dict[str, Any]:
        """JSON-ready view (columns in table order, time as ISO text)."""
        return {**asdict(self), "updated_at": self.updated_at.isoformat()}


class CatalogStore:
    """The ``adapters`` and ``model_aliases`` tables: what the gateway can route beyond its base models."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    def register_adapter(
        self,
        *,
        name: str,
        version: int | None,
        base_model_id: str,
        uri: str,
        kind: str,
        mlflow_run_id: str | None,
        lineage: dict[str, Any],
    ) -> AdapterRecord:
        """Add an adapter version; ``version`` None takes the next free one. Returns its record."""
        with self._engine.begin() as conn:
            if version is None:
                latest = conn.execute(
                    sa.select(sa.func.max(adapters.c.version)).where(adapters.c.name == name)
                ).scalar_one()
                version = int(latest or 0) + 1
            row = {
                "id": f"{name}-v{version}",
                "name": name,
                "version": version,
                "base_model_id": base_model_id,
                "uri": uri,
                "kind": kind,
                "mlflow_run_id": mlflow_run_id,
                "lineage": lineage,
                "created_at": utcnow(),
            }
            conn.execute(adapters.insert().values(**row))
        return _adapter_record(row)

    def get_adapter(self, adapter_id: str) -> AdapterRecord | None:
        """The adapter with this model id (``<name>-v<version>``), or None."""
        with self._engine.connect() as conn:
            row = conn.execute(adapters.select().where(adapters.c.id == adapter_id)).mappings().first()
        return _adapter_record(row) if row is not None else None

    def list_adapters(self, *, name: str | None = None) -> list[AdapterRecord]:
        """Adapters, newest first, optionally of one name."""
        query = adapters.select().order_by(adapters.c.created_at.desc(), adapters.c.version.desc())
        if name is not None:
            query = query.where(adapters.c.name == name)
        with self._engine.connect() as conn:
            return [_adapter_record(r) for r in conn.execute(query).mappings()]

    def set_alias(
        self,
        alias: str,
        target: str,
        *,
        updated_by: str | None = None,
        decision: dict[str, Any] | None = None,
        expect: str | None = None,
    ) -> AliasRecord:
        """Point ``alias`` at ``target``; returns its record.

        ``expect``: the target the caller saw; if another switch happened since, nothing
        changes and ``ValueError`` is raised (two promotions never overwrite each other
        unseen).
        """
        with self._engine.begin() as conn:
            current = (
                conn.execute(model_aliases.select().where(model_aliases.c.alias == alias).with_for_update())
                .mappings()
                .first()
            )
            previous = current["target"] if current is not None else None
            if expect is not None and previous != expect:
                raise ValueError(f"alias {alias} points at {previous}, not {expect}: switched meanwhile")
            row = {
                "alias": alias,
                "target": target,
                "previous": previous,
                "updated_at": utcnow(),
                "updated_by": updated_by,
                "decision": decision,
            }
            if current is None:
                conn.execute(model_aliases.insert().values(**row))
            else:
                conn.execute(model_aliases.update().where(model_aliases.c.alias == alias).values(**row))
        return _alias_record(row)

    def get_alias(self, alias: str) -> AliasRecord | None:
        """The alias, or None."""
        with self._engine.connect() as conn:
            row = (
                conn.execute(model_aliases.select().where(model_aliases.c.alias == alias)).mappings().first()
            )
        return _alias_record(row) if row is not None else None

    def list_aliases(self) -> list[AliasRecord]:
        """Every alias, by name."""
        with self._engine.connect() as conn:
            rows = conn.execute(model_aliases.select().order_by(model_aliases.c.alias)).mappings()
            return [_alias_record(r) for r in rows]


def _adapter_record(row: Mapping[Any, Any]) -> AdapterRecord:
    return AdapterRecord(**{**row, "created_at": as_utc(row["created_at"])})


def _alias_record(row: Mapping[Any, Any]) -> AliasRecord:
    return AliasRecord(**{**row, "updated_at": as_utc(row["updated_at"])})
