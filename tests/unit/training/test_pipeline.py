"""The steps fine-tuning and alignment share: a run's storage, and publishing its adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from welip.store import CatalogStore, Database
from welip.training import FinetuneConfig, _pipeline, lineage, start_mlflow_run
from welip.training._pipeline import new_run, publish_adapter

CFG = {
    "name": "faq",
    "model": "smollm2-135m-instruct",
    "base_model_id": "smollm2-135m-instruct",
    "dataset": "x",
}
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture
def adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A trained adapter's folder, with storage, catalog and MLflow in ``tmp_path``."""
    monkeypatch.setenv("WELIP_STORAGE_URL", str(tmp_path / "artifacts"))
    monkeypatch.setenv("WELIP_DATABASE_URL", f"sqlite:///{tmp_path}/welip.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("WELIP_GIT_COMMIT", "abc123")
    path = tmp_path / "checkpoint" / "adapter"
    path.mkdir(parents=True)
    for name in ADAPTER_FILES:
        (path / name).write_text(name)
    return path


def test_a_run_keeps_its_files_under_its_area_name_and_id(adapter: Path, tmp_path: Path) -> None:
    run = new_run(FinetuneConfig.model_validate(CFG), "finetune")
    assert len(run.id) == 12 and run.name == f"faq-{run.id}"
    assert run.storage_url == f"{tmp_path}/artifacts/finetune"
    assert run.outputs_url == f"{tmp_path}/artifacts/finetune/faq/{run.id}"
    elsewhere = new_run(FinetuneConfig.model_validate({**CFG, "storage_url": "s3://b/runs/"}), "align")
    assert elsewhere.outputs_url == f"s3://b/runs/faq/{elsewhere.id}"


def test_the_adapter_is_stored_logged_and_registered(adapter: Path) -> None:
    cfg = FinetuneConfig.model_validate(CFG)
    run = new_run(cfg, "finetune")
    tags = {**lineage(cfg, "0" * 64), "welip.kind": "sft"}
    mlflow_run = start_mlflow_run(cfg, run.name, tags)
    published = publish_adapter(
        cfg, run, adapter, kind="sft", tags=tags, mlflow_run=mlflow_run, skipped_rows=2, train_s=1.5
    )
    assert published.adapter_url == f"{run.outputs_url}/adapter" and published.merged_url is None
    assert sorted(p.name for p in Path(published.adapter_url).iterdir()) == ADAPTER_FILES
    assert published.model == "faq-v1"

    client = MlflowClient()
    logged = client.get_run(mlflow_run.run_id)
    assert logged.data.metrics == {"skipped_rows": 2, "train_s": 1.5}
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.run_id)}
    assert {"adapter", "finetune_config.json"} <= artifacts
    assert client.get_model_version("faq", "1").source == published.adapter_url
    row = CatalogStore(Database()).get_adapter("faq-v1")
    assert row is not None and row.kind == "sft" and row.uri == published.adapter_url
    assert row.mlflow_run_id == mlflow_run.run_id


def test_merged_on_request_and_neither_tracked_nor_registered_when_turned_off(
    adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    merged_from: list[tuple[str, Path]] = []

    def merge(model: str, adapter_path: Path, out: str) -> None:
        merged_from.append((model, Path(adapter_path)))
        (Path(out) / "model.safetensors").write_text("merged")

    monkeypatch.setattr(_pipeline, "merge_adapter", merge)
    cfg = FinetuneConfig.model_validate({**CFG, "merge": True, "register_model": False, "mlflow": False})
    run = new_run(cfg, "align")
    published = publish_adapter(
        cfg, run, adapter, kind="grpo", tags={}, mlflow_run=None, skipped_rows=0, train_s=1.0
    )
    assert merged_from == [("smollm2-135m-instruct", adapter)]
    assert published.merged_url == f"{run.outputs_url}/merged"
    assert (Path(published.merged_url) / "model.safetensors").read_text() == "merged"
    assert published.model is None
    assert not (tmp_path / "welip.db").exists() and not (tmp_path / "mlflow.db").exists()
