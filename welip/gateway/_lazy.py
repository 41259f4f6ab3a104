"""A store a router opens on its first request (its database and migrations), not at replica start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from welip.api import OpenAIError
from welip.gateway._admin import _call

S = TypeVar("S")


class LazyStore(Generic[S]):
    """A store, or what opens it: called once, off the event loop, on first use.

    A gateway whose trust layer needs no database then starts without one; while the
    database is unreachable the opening is a 503 (and is tried again on the next request).
    """

    def __init__(self, store: S | Callable[[], S] | None, kind: type[S], missing: str) -> None:
        """``missing``: the 501 message when there is neither a store nor a way to open one."""
        self._store: S | None = store if isinstance(store, kind) else None
        self._open = None if isinstance(store, kind) else store
        self._missing = missing
        self._lock = asyncio.Lock()

    async def __call__(self) -> S:
        if self._store is None and self._open is not None:
            async with self._lock:
                if self._store is None:
                    self._store = await _call(self._open)  # type: ignore[arg-type] # an unreachable database is a 503
        if self._store is None:
            raise OpenAIError(501, self._missing, type="server_error", code="not_configured")
        return self._store
