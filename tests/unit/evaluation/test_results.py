"""Scoring stage, summary, result files (local and S3) and the MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from welip.evaluation import (
    Malformed,
    SuiteConfig,
    log_mlflow,
    read_samples,
    score_batch,
    summarize,
    write_results,
)
from welip.evaluation._results import summary_table
from welip.evaluation._stages import decode, encode, loglikelihoods

SUITE = SuiteConfig.model_validate(
    {
        "task": "t",
        "dataset_path": "d.jsonl",
        "doc_to_text": "{{ q }}",
        "doc_to_target": "{{ a }}",
        "metric_list": [
            {"metric": "numeric_match"},
            {"metric": "json_schema", "reference": "{{ s }}"},
            {
                "metric": "judge",
                "name": "quality",
                "judge": {"instructions": "{{ outputs }}", "feedback_type": "int", "target": {"model": "j"}},
            },
        ],
        "target": {"model": "m"},
    }
)


def sample(i: int, output: str | None, **extra: object) -> dict:
    return {
        "id": f"s{i}",
        "row": i,
        "inputs": "q",
        "target": "4",
        "output": output,
        "references": {"numeric_match": "4", "json_schema": '{"type": "object"}'},
        **extra,
    }


def test_loglikelihood_sums_only_the_continuation_tokens() -> None:
    context = "Q: capital?\nAnswer:"
    prompts = [context + " Paris", context + " Rome"]
    answer = {
        "choices": [
            # tokens: context (two tokens), continuation, then the one generated token
            {
                "index": 1,
                "logprobs": {"text_offset": [0, 10, 19, 24], "token_logprobs": [None, -1.0, -3.0, -0.1]},
            },
            {
                "index": 0,
                "logprobs": {"text_offset": [0, 10, 19, 25], "token_logprobs": [None, -1.0, -0.5, -9.0]},
            },
        ]
    }
    assert loglikelihoods(answer, context, prompts) == [-0.5, -3.0]
    with pytest.raises(ValueError, match="echo"):
        loglikelihoods({"choices": [{"index": 0, "logprobs": None}]}, context, prompts[:1])


def test_scores_failures_and_summary_account_for_every_row() -> None:
    samples = [
        sample(0, "It is 4."),
        sample(1, '{"a": 1} and 5'),
        sample(2, None, error="RequestFailed: 400: context_length_exceeded"),
    ]
    scored = decode(score_batch(encode(samples), SUITE.metric_list))
    assert [s["scores"]["numeric_match"] for s in scored] == [1.0, 0.0, None]
    assert [s["scores"]["json_schema"] for s in scored] == [0.0, 1.0, None]
    scored[0]["scores"]["quality"], scored[0]["judgements"] = (
        4.0,
        {"quality": {"value": 4.0, "failure": None}},
    )
    scored[1]["scores"]["quality"] = None
    scored[1]["judgements"] = {"quality": {"value": None, "failure": "parse", "raw": "{"}}
    malformed = [Malformed(3, "s3", "invalid JSON")]
    summary = summarize(SUITE, scored, malformed, n_rows=4)
    assert (summary["rows"], summary["scored"], summary["errors"], summary["malformed"]) == (4, 2, 1, 1)
    assert summary["metrics"]["numeric_match"] == pytest.approx(
        {"mean": 0.5, "stderr": 0.5, "n": 2, "higher_is_better": True}
    )
    quality = summary["metrics"]["quality"]
    assert quality["mean"] == 4.0 and quality["n"] == 1
    assert quality["parse_failures"] == 1 and quality["parse_failure_rate"] == 0.5
    assert summary["error_rows"] == [
        {"id": "s2", "row": 2, "error": "RequestFailed: 400: context_length_exceeded"}
    ]
    assert summary["malformed_rows"] == [{"row": 3, "id": "s3", "error": "invalid JSON"}]
    assert "quality.parse_failures  1" in summary_table(summary)


def test_results_round_trip_through_s3(s3_endpoint: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="results")
    samples = [sample(0, "4", scores={"numeric_match": 1.0})]
    write_results("s3://results/eval/t/run1", samples, {"task": "t"}, SUITE)
    assert read_samples("s3://results/eval/t/run1") == samples


def test_mlflow_run_has_params_metrics_tags_dataset_and_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    samples = [sample(0, "4", scores={"numeric_match": 1.0, "json_schema": 0.0, "quality": 5.0})]
    summary = summarize(SUITE, samples, [], n_rows=1)
    summary["samples_per_s"] = 2.5
    tags = {
        "dataset_sha256": "ab" * 32,
        "template_sha256": "cd" * 32,
        "model": "m",
        "engine_version": "vllm x",
    }
    run_id = log_mlflow(SUITE, summary, samples, tags, run_name="t-m")
    run = mlflow.get_run(run_id)
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())  # not ./mlruns
    assert not (Path.cwd() / "mlruns").exists()
    assert run.data.metrics["numeric_match"] == 1.0 and run.data.metrics["samples_per_s"] == 2.5
    assert run.data.metrics["quality.parse_failures"] == 0
    assert run.data.params["target.model"] == "m" and run.data.params["seed"] == "1234"
    assert run.data.tags["dataset_sha256"] == "ab" * 32
    assert run.inputs.dataset_inputs[0].dataset.name == "t"
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert files == {"samples.jsonl", "summary.json", "suite.json"}
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="samples.jsonl", dst_path=str(tmp_path)
    )
    assert json.loads(Path(local).read_text())["id"] == "s0"
