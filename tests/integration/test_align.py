"""GRPO alignment end to end: ``jobs/align.py`` as a process, TRL on a CPU Ray Train worker.

The job runs as ``python jobs/align.py`` would on a laptop, on a Ray instance of its own
(``RAY_ADDRESS=local``: it neither needs nor disturbs the session's cluster), with storage,
MLflow (SQLite) and the catalog (SQLite) in a temporary folder. SmolLM2-135M, a few tiny
steps: what is checked is the path (rewards per step in MLflow, the adapter in storage, the
catalog row), not that the model learns arithmetic in three steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from welip.store import CatalogStore, Database

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/align/smollm2_arithmetic.yaml"
STEPS = 3
TINY = [f"max_steps={STEPS}", "batch_size=1", "num_generations=4", "max_completion_len=16", "lora_rank=8"]
TIMEOUT_S = 600


def summary_of(stdout: str) -> dict[str, Any]:
    """The JSON summary the job prints last (an indented object starting at a line's start)."""
    start = stdout.rindex("\n{\n") + 1 if not stdout.startswith("{\n") else 0
    parsed: dict[str, Any] = json.loads(stdout[start:])
    return parsed


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("align")
    env = {
        **os.environ,
        "RAY_ADDRESS": "local",
        "WELIP_STORAGE_URL": str(root / "artifacts"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "WELIP_DATABASE_URL": f"sqlite:///{root}/welip.db",
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "jobs/align.py", "--config", CONFIG, *TINY],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    summary = summary_of(proc.stdout)
    print(f"align job: {elapsed:.0f}s, rewards per step {summary['reward_per_step']}")
    return {"summary": summary, "env": env, "stderr": proc.stderr, "elapsed_s": elapsed}


def test_the_summary_reports_the_run(job: dict[str, Any]) -> None:
    summary = job["summary"]
    assert summary["rl_backend"] == "trl"
    assert summary["steps"] == STEPS
    assert summary["prompts"] == 40 and summary["skipped_rows"] == 0
    assert len(summary["reward_per_step"]) == STEPS
    assert summary["reward_first_step"] == summary["reward_per_step"][0]
    assert summary["reward_last_step"] == summary["reward_per_step"][-1]
    assert all(0.0 <= r <= 1.0 for r in summary["reward_per_step"])  # numeric_match scores 0 or 1
    assert summary["model"] == "welip-arith-grpo-v1"


def test_the_reward_of_every_step_is_in_mlflow(job: dict[str, Any]) -> None:
    summary = job["summary"]
    client = MlflowClient(tracking_uri=job["env"]["MLFLOW_TRACKING_URI"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["welip.kind"] == "grpo"
    assert run.data.tags["welip.reward_metric"] == "numeric_match"
    assert run.data.params["reward_metric"] == "numeric_match"
    for name in ("reward", "reward_std", "loss", "rewards/numeric_match/mean"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), name
    rewards = sorted(client.get_metric_history(run.info.run_id, "reward"), key=lambda m: m.step)
    assert [m.value for m in rewards] == pytest.approx(summary["reward_per_step"])
    version = client.get_model_version("welip-arith-grpo", "1")
    assert version.source == summary["adapter_url"]
    assert version.tags["welip.kind"] == "grpo"


def test_the_adapter_is_in_storage(job: dict[str, Any]) -> None:
    adapter = Path(job["summary"]["adapter_url"])
    assert adapter.is_relative_to(Path(job["env"]["WELIP_STORAGE_URL"]) / "align" / "welip-arith-grpo")
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8


def test_the_catalog_lists_a_grpo_adapter_of_the_served_base_model(job: dict[str, Any]) -> None:
    db = Database(job["env"]["WELIP_DATABASE_URL"])
    try:
        (row,) = CatalogStore(db).list_adapters(name="welip-arith-grpo")
    finally:
        db.dispose()
    assert row.kind == "grpo"
    assert row.id == "welip-arith-grpo-v1"
    assert row.base_model_id == "smollm2-135m-instruct"
    assert row.uri == job["summary"]["adapter_url"]
    assert row.mlflow_run_id == job["summary"]["mlflow_run_id"]
