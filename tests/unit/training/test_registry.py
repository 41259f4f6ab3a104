"""Registration: an MLflow model version and a catalog row that name the same adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from welip.store import CatalogStore, Database
from welip.training import FinetuneConfig, lineage, register_adapter, start_mlflow_run

CFG = FinetuneConfig.model_validate(
    {
        "name": "faq",
        "model": "smollm2-135m-instruct",
        "base_model_id": "smollm2-135m-instruct",
        "dataset": "x",
    }
)


def test_versions_agree_and_a_taken_catalog_version_moves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("WELIP_GIT_COMMIT", "abc123")
    db = Database(f"sqlite:///{tmp_path}/welip.db")
    db.upgrade()
    tags = lineage(CFG, "0" * 64)
    assert tags["git_commit"] == "abc123" and len(tags["config_sha256"]) == 64
    run_id, _ = start_mlflow_run(CFG, "faq-run", tags)
    first = register_adapter(CFG, "/a/1", kind="sft", mlflow_run_id=run_id, tags=tags, db=db)
    assert first.id == "faq-v1" and first.lineage["mlflow_model_version"] == "1"
    client = MlflowClient()
    assert client.get_model_version("faq", "1").source == "/a/1"

    # Another registry's adapter took v2 in this catalog: MLflow's v2 becomes faq-v3.
    CatalogStore(db).register_adapter(
        name="faq", version=2, base_model_id="m", uri="/elsewhere", kind="sft", mlflow_run_id=None, lineage={}
    )
    second = register_adapter(CFG, "/a/2", kind="sft", mlflow_run_id=run_id, tags=tags, db=db)
    assert second.id == "faq-v3" and second.lineage["mlflow_model_version"] == "2"
    assert client.get_model_version("faq", "2").tags["welip.model_id"] == "faq-v3"


def test_without_mlflow_the_catalog_numbers_versions(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/welip.db")
    db.upgrade()
    rows = [
        register_adapter(CFG, f"/a/{i}", kind="sft", mlflow_run_id=None, tags={}, db=db) for i in range(2)
    ]
    assert [r.id for r in rows] == ["faq-v1", "faq-v2"]
