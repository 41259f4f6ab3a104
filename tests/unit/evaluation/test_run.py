"""run_suite: one evaluation run end to end, its Ray Data pipeline faked (integration runs it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import welip.evaluation._run as run_module
from welip.evaluation import EndpointUnavailable, SuiteConfig, read_samples, run_suite
from welip.store import Database, EvalRunStore

RUN_ID = "ab" * 16


@pytest.fixture
def suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SuiteConfig:
    """Three good rows and one that is not JSON; the endpoint answers, the database is SQLite."""
    rows = [json.dumps({"id": f"r{i}", "q": f"{i} + {i}?", "a": str(2 * i)}) for i in range(3)]
    rows.insert(2, '{"id": "broken", ')
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("WELIP_DATABASE_URL", f"sqlite:///{tmp_path}/welip.db")
    monkeypatch.setattr(run_module, "check_endpoint", lambda target: None)
    monkeypatch.setattr(run_module, "endpoint_version", lambda target: "0.0.1")
    return SuiteConfig.model_validate(
        {
            "task": "t",
            "dataset_path": str(data),
            "doc_to_text": "{{ q }}",
            "doc_to_target": "{{ a }}",
            "metric_list": [{"metric": "numeric_match"}],
            "target": {"model": "m"},
            "storage_url": str(tmp_path / "artifacts"),
            "mlflow": {"enabled": False},
            "run_id": RUN_ID,
        }
    )


def answer_right(
    cfg: SuiteConfig, samples: list[dict[str, Any]], trace_context: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    return [{**s, "output": s["target"], "scores": {"numeric_match": 1.0}} for s in samples]


def test_a_run_writes_its_results_records_its_row_and_prints_its_table(
    suite: SuiteConfig,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    span_exporter: InMemorySpanExporter,
) -> None:
    monkeypatch.setattr(run_module, "run_pipeline", answer_right)
    with trace.get_tracer("test").start_as_current_span("eval.run"):
        summary = run_suite(suite)

    assert (summary["rows"], summary["scored"], summary["errors"], summary["malformed"]) == (4, 3, 0, 1)
    assert summary["run_id"] == RUN_ID and summary["mlflow_run_id"] is None
    assert summary["results_url"] == str(Path(suite.storage_url or "") / "eval" / "t" / RUN_ID)
    assert summary["metrics"]["numeric_match"]["mean"] == 1.0
    assert summary["tags"]["engine_version"] == "vllm 0.0.1" and summary["tags"]["seed"] == "1234"
    assert [s["id"] for s in read_samples(summary["results_url"])] == ["r0", "r1", "r2"]
    row = EvalRunStore(Database()).get_eval_run(RUN_ID)
    assert row is not None and row.status == "finished" and row.metrics == {"numeric_match": 1.0}
    assert (row.rows, row.scored, row.malformed, row.error) == (4, 3, 1, None)
    out = capsys.readouterr().out
    assert "t on m (endpoint): 4 rows, 3 scored, 0 failed, 1 malformed" in out
    assert f"run {RUN_ID}: {summary['results_url']}\n" in out
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "eval.run"]
    assert span.attributes is not None and span.attributes["welip.eval.run_id"] == RUN_ID
    assert span.attributes["welip.eval.task"] == "t" and span.attributes["llm.model_name"] == "m"


def test_a_run_that_fails_in_the_pipeline_leaves_a_failed_row(
    suite: SuiteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def die(*args: object, **kwargs: object) -> list[dict[str, Any]]:
        raise RuntimeError("engine died")

    monkeypatch.setattr(run_module, "run_pipeline", die)
    with pytest.raises(RuntimeError, match="engine died"):
        run_suite(suite)
    row = EvalRunStore(Database()).get_eval_run(RUN_ID)
    assert row is not None and row.status == "failed" and row.error is not None and "engine died" in row.error
    assert (row.rows, row.scored, row.errors, row.malformed) == (4, 0, 0, 1)


def test_an_unreachable_endpoint_fails_before_any_work_or_row(
    suite: SuiteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(target: object) -> None:
        raise EndpointUnavailable("http://127.0.0.1:9/v1 is unreachable")

    monkeypatch.setattr(run_module, "check_endpoint", unreachable)
    monkeypatch.setattr(run_module, "run_pipeline", answer_right)
    with pytest.raises(EndpointUnavailable, match="unreachable"):
        run_suite(suite)
    db = Database()
    db.upgrade()
    assert EvalRunStore(db).get_eval_run(RUN_ID) is None
