"""Adapter lookup for the engine: catalog rows, local and S3 folders, wrong base models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from welip.serving import AdapterNotFound, CatalogLoraLoader, local_adapter_dir
from welip.store import CatalogStore, Database


def _adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def test_a_local_adapter_is_used_in_place_and_an_incomplete_one_is_refused(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "a")
    assert local_adapter_dir(str(folder)) == str(folder)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks adapter_model\.safetensors"):
        local_adapter_dir(str(folder))


def test_an_s3_adapter_is_copied_once_into_the_cache(tmp_path: Path, s3_endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="models")
    for name, body in (("adapter_config.json", b'{"r": 8}'), ("adapter_model.safetensors", b"weights")):
        s3.put_object(Bucket="models", Key=f"faq/v1/{name}", Body=body)
    local = Path(local_adapter_dir("s3://models/faq/v1", cache=tmp_path / "cache"))
    assert (local / "adapter_model.safetensors").read_bytes() == b"weights"
    s3.delete_object(Bucket="models", Key="faq/v1/adapter_model.safetensors")
    assert local_adapter_dir("s3://models/faq/v1", cache=tmp_path / "cache") == str(local)  # cached
    with pytest.raises(FileNotFoundError, match=r"lacks adapter_config\.json"):
        local_adapter_dir("s3://models/other", cache=tmp_path / "cache")


def test_the_loader_finds_adapters_in_the_catalog_for_their_own_base_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WELIP_DATABASE_URL", f"sqlite:///{tmp_path}/welip.db")
    db = Database()
    db.upgrade()
    folder = _adapter(tmp_path / "faq")
    CatalogStore(db).register_adapter(
        name="faq",
        version=None,
        base_model_id="base",
        uri=str(folder),
        kind="sft",
        mlflow_run_id=None,
        lineage={},
    )
    loader = CatalogLoraLoader(download_timeout_s=10)
    disk = asyncio.run(loader.load_model_from_config("faq-v1", SimpleNamespace(model_id="base")))
    assert (disk.model_id, disk.local_path) == ("faq-v1", str(folder))
    with pytest.raises(AdapterNotFound, match="trained for base, not other"):
        asyncio.run(loader.load_model_from_config("faq-v1", SimpleNamespace(model_id="other")))
    with pytest.raises(AdapterNotFound, match="no registered adapter faq-v9"):
        asyncio.run(loader.load_model_from_config("faq-v9", SimpleNamespace(model_id="base")))
