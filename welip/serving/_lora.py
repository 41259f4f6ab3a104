"""LoRA adapters for ``ray.serve.llm``: found in WeLIP's catalog, copied from WeLIP's storage.

``LLMServer`` multiplexes adapters by id (Serve model multiplexing) and asks a loader
for a local folder; Ray's own loader reads a fixed cloud prefix. This one looks the id
up in the catalog the training jobs write (``adapters`` table), so an adapter can live
wherever its job stored it (a local path on a laptop, ``s3://`` on a cluster), and
refuses adapters trained for another base model.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from welip._compat.ray import DiskMultiplexConfig, global_id_manager
from welip.store import AdapterRecord, CatalogStore, Database, filesystem

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class AdapterNotFound(LookupError):
    """The catalog has no such adapter for this engine's model."""


def default_lora_cache() -> Path:
    """Local copies of remote adapters: ``$WELIP_LORA_CACHE`` or ``~/.cache/welip/lora``."""
    return Path(os.environ.get("WELIP_LORA_CACHE") or Path.home() / ".cache" / "welip" / "lora")


def local_adapter_dir(uri: str, cache: Path | None = None) -> str:
    """A local folder holding the adapter at ``uri``, copying it from ``s3://`` once.

    Raises:
        FileNotFoundError: the folder lacks the adapter's config or weights.
    """
    if not uri.startswith("s3://"):
        path = Path(uri).expanduser()
        missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"adapter folder {uri} lacks {', '.join(missing)}")
        return str(path)
    target = (cache or default_lora_cache()) / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if not (target / ".complete").is_file():
        fs, remote = filesystem(uri)
        if not fs.exists(f"{remote}/{ADAPTER_FILES[0]}"):
            raise FileNotFoundError(f"adapter folder {uri} lacks {ADAPTER_FILES[0]}")
        target.mkdir(parents=True, exist_ok=True)
        fs.get(f"{remote}/", f"{target}/", recursive=True)
        (target / ".complete").touch()
    return str(target)


class CatalogLoraLoader:
    """``model_downloader`` of :class:`PreparedLLMServer`: adapter id -> local folder.

    Has the interface ``LLMServer`` calls on Ray's ``LoraModelLoader``.
    """

    def __init__(self, download_timeout_s: float | None = None, max_tries: int = 1) -> None:
        self._timeout_s = download_timeout_s
        self._catalog: CatalogStore | None = None

    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> DiskMultiplexConfig:
        row = await asyncio.to_thread(self._lookup, lora_model_id)
        if row is None:
            raise AdapterNotFound(f"no registered adapter {lora_model_id}")
        if row.base_model_id != llm_config.model_id:
            raise AdapterNotFound(
                f"adapter {lora_model_id} was trained for {row.base_model_id}, not {llm_config.model_id}"
            )
        path = await asyncio.wait_for(asyncio.to_thread(local_adapter_dir, row.uri), self._timeout_s)
        logger.info("adapter %s: %s -> %s", lora_model_id, row.uri, path)
        return DiskMultiplexConfig(
            model_id=lora_model_id,
            max_total_tokens=None,
            local_path=path,
            lora_assigned_int_id=global_id_manager.next(),
        )

    def _lookup(self, adapter_id: str) -> AdapterRecord | None:
        if self._catalog is None:
            database = Database()
            self._catalog = CatalogStore(database)
            database.upgrade()
        return self._catalog.get_adapter(adapter_id)
