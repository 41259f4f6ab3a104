"""Fine-tuning on Ray Train, and the loop back into serving, on the session's real stack.

``welip.training.finetune`` (what ``jobs/finetune.py`` runs) runs in this process, under the
job's root span, on the session's Ray cluster (as ``ray job submit`` would run it there):
LoRA on SmolLM2 with one CPU worker, tracked in
MLflow (a SQLite store per module), registered in the session's PostgreSQL catalog, and
hot-loaded into the running engine of the session app. ``welip promote`` runs its gate
evaluations as subprocesses joining the same cluster.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import ray
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tests.integration.conftest import ADMIN_KEY, MODEL, series_value
from tests.phoenix_server import PhoenixServer, children, named, wait_for_trace
from welip.cli import app
from welip.config import load_config
from welip.evaluation import token_f1
from welip.job import parse_job_args
from welip.observability import job_span, trace_id_of
from welip.store import AuditStore, CatalogStore, Database, EvalRunStore
from welip.training import BackendUnavailable, FinetuneConfig, finetune

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "configs" / "finetune" / "smollm2_faq.yaml"
PROMPT = "What is WeLIP?"
ANSWER = json.loads((REPO_ROOT / "data" / "finetune" / "welip_faq.jsonl").read_text().splitlines()[0])[
    "messages"
][-1]["content"]


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """``finetune`` under the run's root span ``finetune.run``, as ``welip.job.run_job`` runs it."""
    with job_span("finetune", "finetune.run", {"openinference.span.kind": "CHAIN"}) as span:
        summary = finetune(cfg)
    trace_id = trace_id_of(span)
    return summary if trace_id is None else {**summary, "trace_id": trace_id}


@pytest.fixture(scope="module")
def env(
    base_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The job's environment: the session database, a module MLflow store, local storage."""
    root = tmp_path_factory.mktemp("finetune")
    values = {
        "WELIP_API_KEY": ADMIN_KEY,
        "WELIP_DATABASE_URL": database_url,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "WELIP_STORAGE_URL": str(root / "artifacts"),
        # `welip promote` runs jobs/evaluate.py as subprocesses: they join this cluster.
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "RAY_AUTH_MODE": "token",
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    os.chdir(REPO_ROOT)
    yield {**values, "base_url": base_url, "root": str(root)}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def config(*overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, CONFIG, list(overrides))


@pytest.fixture(scope="module")
def trained(env: dict[str, str]) -> dict[str, Any]:
    return run_finetune(config())


def chat(base_url: str, model: str, prompt: str = PROMPT, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 48,
            "temperature": 0,
            **extra,
        },
        timeout=120,
    )


def test_lora_steps_lower_the_loss_and_register_the_adapter(
    env: dict[str, str], trained: dict[str, Any]
) -> None:
    assert trained["probe_loss_after"] < 0.8 * trained["probe_loss_before"]
    adapter = Path(trained["adapter_url"])
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16

    client = MlflowClient()
    run = client.get_run(trained["mlflow_run_id"])
    assert run.data.params["lora_rank"] == "16"
    assert run.data.tags["base_model"] == "smollm2-135m-instruct"
    assert len(run.data.tags["dataset_sha256"]) == 64 and len(run.data.tags["config_sha256"]) == 64
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, trained["steps"] + 1))
    assert client.get_metric_history(run.info.run_id, "tokens_per_s")[-1].value > 0
    assert "adapter/adapter_model.safetensors" in [
        a.path for a in client.list_artifacts(run.info.run_id, "adapter")
    ]

    name, _, version = trained["model"].rpartition("-v")
    registered = client.get_model_version(name, version)
    assert registered.source == trained["adapter_url"] and registered.run_id == run.info.run_id
    assert registered.tags["welip.kind"] == "sft"
    row = CatalogStore(Database()).get_adapter(trained["model"])
    assert row is not None and row.base_model_id == MODEL and row.uri == trained["adapter_url"]


def test_the_run_is_one_trace_with_a_span_per_step_and_tokens_are_counted(
    trained: dict[str, Any], phoenix: PhoenixServer
) -> None:
    steps, workers = trained["steps"], config().num_workers
    spans = wait_for_trace(
        phoenix,
        trained["trace_id"],
        lambda s: len(named(s, "finetune.step")) >= steps * workers and bool(named(s, "finetune.run")),
    )
    (run,) = named(spans, "finetune.run")
    assert run["attributes"]["welip.finetune.run_id"] == trained["run_id"]
    per_step = children(spans, run, "finetune.step")
    assert len(per_step) == steps * workers  # every worker's every step, under the job's span
    assert sorted({s["attributes"]["welip.finetune.step"] for s in per_step}) == list(range(1, steps + 1))
    assert all(s["attributes"]["welip.finetune.tokens"] > 0 for s in per_step)
    assert series_value("ray_welip_finetune_tokens_total", {"model": MODEL}) > 0


def test_the_adapter_is_hot_loaded_and_changes_greedy_output(
    env: dict[str, str], trained: dict[str, Any]
) -> None:
    base_url, adapter = env["base_url"], trained["model"]
    before = chat(base_url, MODEL).json()["choices"][0]["message"]["content"]
    models = httpx.get(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()[
        "data"
    ]
    card = next(c for c in models if c["id"] == adapter)
    assert card["parent"] == MODEL and card["root"] == adapter  # never where it is stored
    assert trained["adapter_url"] not in str(models)

    tuned = chat(base_url, adapter)
    assert tuned.status_code == 200, tuned.text
    assert tuned.json()["model"] == adapter
    answer = tuned.json()["choices"][0]["message"]["content"]
    assert answer != before
    assert token_f1(answer, ANSWER) > token_f1(before, ANSWER)
    # The base weights answer as before: the adapter was added to the running engine.
    assert chat(base_url, MODEL).json()["choices"][0]["message"]["content"] == before

    streamed = chat(base_url, adapter, stream=True)
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in streamed.text.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    assert text == answer

    missing = chat(base_url, f"{trained['model']}9")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    broken = CatalogStore(Database()).register_adapter(
        name="broken",
        version=None,
        base_model_id=MODEL,
        uri="/nonexistent/adapter",
        kind="sft",
        mlflow_run_id=None,
        lineage={},
    )
    refused = chat(base_url, broken.id)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "adapter_unavailable"
    assert "/nonexistent/adapter" in refused.json()["error"]["message"]


def _kill_worker_after_a_checkpoint(run_name: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the training worker once a step after the first checkpoint has begun.

    A step logged after step 4 means the checkpoint of step 4 was reported (reports
    are synchronous), so a restart has something to resume from.
    """
    client = MlflowClient()
    while not stop.is_set() and not killed:
        runs = mlflow.search_runs(
            experiment_names=["welip-finetune"],
            filter_string=f"tags.`mlflow.runName` LIKE '{run_name}-%'",
            output_format="list",
        )
        logged = {m.step for r in runs for m in client.get_metric_history(r.info.run_id, "loss")}
        if logged and max(logged) >= 5:
            for actor in ray._private.state.actors().values():
                if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE":
                    os.kill(actor["Pid"], signal.SIGKILL)
                    killed.append(actor["Pid"])
        time.sleep(0.2)


def test_a_run_whose_worker_is_killed_resumes_from_its_last_checkpoint(
    env: dict[str, str], tmp_path: Path
) -> None:
    storage = tmp_path / "runs"
    cfg = config(
        "max_steps=12",
        "checkpoint_every_steps=4",
        f"storage_url={storage}",
        "merge=true",
        "name=welip-faq-resume",
    )
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_worker_after_a_checkpoint, args=(cfg.name, killed, stop), daemon=True
    )
    killer.start()
    try:
        summary = run_finetune(cfg)
    finally:
        stop.set()
    assert killed, "no worker was killed: the test did not test a restart"
    assert summary["resumed_from_step"] >= 4 and summary["steps"] == 12
    assert summary["probe_loss_after"] < summary["probe_loss_before"]
    # One MLflow run across the restart, with every step logged.
    client = MlflowClient()
    runs = mlflow.search_runs(
        experiment_names=["welip-finetune"],
        filter_string=f"tags.`welip.finetune_run` = '{summary['run_id']}'",
        output_format="list",
    )
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]
    steps = {m.step for m in client.get_metric_history(summary["mlflow_run_id"], "loss")}
    assert steps == set(range(1, 13))
    # The merged model is a plain HF directory with the adapter's behaviour.
    merged = Path(summary["merged_url"])
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    assert_merged_matches_adapter(merged, Path(summary["adapter_url"]))


def assert_merged_matches_adapter(merged: Path, adapter: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from welip.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path("smollm2-135m-instruct"), dtype=torch.float32
    )
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, str(adapter))(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(ids).logits
    assert torch.allclose(got, expected, atol=1e-3)


def test_bad_configs_fail_before_any_worker_starts(env: dict[str, str], tmp_path: Path) -> None:
    storage = tmp_path / "runs"
    with pytest.raises(BackendUnavailable, match="unsloth runs on GPUs only"):
        run_finetune(config("backend=unsloth", f"storage_url={storage}"))
    with pytest.raises(FileNotFoundError):
        run_finetune(config("dataset=data/finetune/nope.jsonl", f"storage_url={storage}"))
    assert not storage.exists() or not any(storage.rglob("checkpoint_*"))
    with pytest.raises(SystemExit) as exit_info:
        parse_job_args(FinetuneConfig, ["--config", str(CONFIG), "lora_rnak=8"])
    assert exit_info.value.code == 2


def test_promote_switches_the_alias_under_load_only_when_the_gate_passes(
    env: dict[str, str], trained: dict[str, Any]
) -> None:
    base_url, adapter = env["base_url"], trained["model"]
    alias = f"assistant-{os.getpid()}"
    runner = CliRunner()
    assert runner.invoke(app, ["alias", "set", alias, MODEL]).exit_code == 0
    gate = [
        "--gate",
        "configs/eval/welip_faq.yaml",
        "--set",
        f"target.base_url={base_url}/v1",
        "--set",
        "limit=12",
        "--set",
        "target.max_concurrency=8",
    ]

    answers: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            while not stop.is_set():
                started = time.monotonic()
                response = client.post(
                    f"{base_url}/v1/chat/completions",
                    json={"model": alias, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8},
                )
                answers.append((started, response.status_code, response.json().get("model", response.text)))

    workers = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        result = runner.invoke(
            app, ["promote", adapter, "--alias", alias, *gate, "--require", "token_f1 >= current"]
        )
        switched_at = time.monotonic()
        time.sleep(6)  # past every replica's catalog refresh
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    assert result.exit_code == 0, result.output
    assert f"promoted: {alias} -> {adapter}" in result.output
    assert answers and all(status == 200 for _, status, _ in answers), [a for a in answers if a[1] != 200][:3]
    assert {model for _, _, model in answers} == {MODEL, adapter}
    assert all(model == adapter for started, _, model in answers if started > switched_at + 3)

    db = Database()
    assert CatalogStore(db).get_alias(alias).target == adapter  # type: ignore[union-attr]
    [audit] = [
        row for row in AuditStore(db).query_audit(model=alias, status=200) if row["route"] == "welip promote"
    ]
    decision = json.loads(audit["body"])
    assert decision["candidate"] == adapter and decision["current"] == MODEL
    for run_id in (decision["candidate_eval_run"], decision["current_eval_run"]):
        assert EvalRunStore(db).get_eval_run(run_id).status == "finished"  # type: ignore[union-attr]
    assert decision["candidate_metrics"]["token_f1"] >= decision["current_metrics"]["token_f1"]
    name, _, version = adapter.rpartition("-v")
    assert str(MlflowClient().get_model_version_by_alias(name, alias).version) == version

    # The base model does not beat the adapter on its own FAQ: the gate refuses it.
    back = runner.invoke(app, ["promote", MODEL, "--alias", alias, *gate, "--require", "token_f1 >= current"])
    assert back.exit_code == 1, back.output
    assert f"not promoted: {alias} -> {adapter}" in back.output
    assert CatalogStore(db).get_alias(alias).target == adapter  # type: ignore[union-attr]
    [refused] = AuditStore(db).query_audit(model=alias, status=412)
    assert json.loads(refused["body"])["promoted"] is False
