"""Model names beyond the served base models: registered LoRA adapters and aliases.

The training jobs register adapters (``<name>-v<version>``) and ``welip promote``
switches aliases, both in WeLIP's database; every gateway replica keeps a snapshot,
refreshed every ``catalog_refresh_s`` (and at once, at most twice a second, when a
request names a model the snapshot lacks). A switch reaches all replicas within one
refresh; requests already running keep the model they started on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from welip.gateway._cards import ModelCard
from welip.store import AdapterRecord, AliasRecord, CatalogStore, Database

logger = logging.getLogger(__name__)

_MISS_REFRESH_S = 0.5


@dataclass(frozen=True)
class Route:
    """Where a requested model name runs."""

    engine: str
    """The served model id whose engine runs the request."""
    adapter: str | None
    """The adapter id loaded into that engine, or None for the base weights."""

    @property
    def target(self) -> str:
        """The concrete model: the adapter id, else the engine's model id."""
        return self.adapter or self.engine


class Catalog:
    """Snapshot of adapters and aliases usable with the engines this gateway serves.

    Adapters count only for models served with ``lora`` on; aliases may point at an
    adapter or a served model, never shadow a served model's id.
    """

    def __init__(
        self,
        served: list[str],
        lora_models: list[str],
        refresh_s: float,
        database: Database | None = None,
    ) -> None:
        self._served = set(served)
        self._lora_models = set(lora_models)
        self._refresh_s = refresh_s
        self._database = database
        self._routes: dict[str, Route] = {}
        self._cards: list[ModelCard] = []
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def route(self, model: str) -> Route | None:
        """The route of an adapter id or alias, or None if the catalog has no such name."""
        await self._refresh(stale_after_s=self._refresh_s)
        route = self._routes.get(model)
        if route is None:
            await self._refresh(stale_after_s=_MISS_REFRESH_S)
            route = self._routes.get(model)
        return route

    async def cards(self) -> list[ModelCard]:
        """``/v1/models`` entries of the adapters and aliases."""
        await self._refresh(stale_after_s=self._refresh_s)
        return self._cards

    async def _refresh(self, stale_after_s: float) -> None:
        if time.monotonic() - self._loaded_at < stale_after_s:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at < stale_after_s:
                return
            try:
                adapters, aliases = await asyncio.to_thread(self._load)
            except Exception as exc:  # noqa: BLE001 - keep serving the last snapshot
                logger.warning("model catalog not refreshed: %s", exc)
                self._loaded_at = time.monotonic()
                return
            self._build(adapters, aliases)
            self._loaded_at = time.monotonic()

    def _load(self) -> tuple[list[AdapterRecord], list[AliasRecord]]:
        if self._database is None:
            self._database = Database()
            self._database.upgrade()
        catalog = CatalogStore(self._database)
        return catalog.list_adapters(), catalog.list_aliases()

    def _build(self, adapters: list[AdapterRecord], aliases: list[AliasRecord]) -> None:
        routes: dict[str, Route] = {}
        cards: list[ModelCard] = []
        for row in adapters:
            if row.base_model_id in self._lora_models:  # engines with LoRA on
                routes[row.id] = Route(row.base_model_id, row.id)
                # Its id, not its URI: clients are not told where adapters are stored.
                cards.append(_card(row.id, row.created_at, root=row.id, parent=row.base_model_id))
        for alias in aliases:
            target = alias.target
            route = routes.get(target) or (Route(target, None) if target in self._served else None)
            if route is None or alias.alias in self._served:
                continue  # points at nothing served here, or would shadow a served model
            routes[alias.alias] = route
            cards.append(_card(alias.alias, alias.updated_at, root=route.target, parent=route.engine))
        self._routes, self._cards = routes, cards


def _card(model_id: str, created: datetime, *, root: str, parent: str) -> ModelCard:
    return ModelCard(id=model_id, created=int(created.timestamp()), root=root, parent=parent)
