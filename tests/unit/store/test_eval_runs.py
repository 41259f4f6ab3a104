"""Evaluation runs: recorded, read back and listed as typed records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from welip.store import Database, EvalRunRecord, EvalRunStore
from welip.store._schema import eval_runs


def test_eval_runs_are_recorded_and_listed_newest_first(database: Database) -> None:
    runs = EvalRunStore(database)
    base: dict[str, Any] = {
        "model": "m",
        "target_kind": "endpoint",
        "status": "finished",
        "seed": 1,
        "rows": 3,
        "scored": 2,
        "errors": 0,
        "malformed": 1,
        "results_url": "s3://b/eval",
    }
    older = datetime.now(UTC) - timedelta(minutes=5)
    runs.record_eval_run(EvalRunRecord(**base, id="r1", task="a", metrics={"em": 0.5}, created_at=older))
    runs.record_eval_run(EvalRunRecord(**base, id="r2", task="b", metrics={"em": None}, mlflow_run_id="ml"))
    assert [r.id for r in runs.list_eval_runs()] == ["r2", "r1"]
    assert [r.id for r in runs.list_eval_runs(task="a")] == ["r1"]
    run = runs.get_eval_run("r1")
    assert run is not None and run.metrics == {"em": 0.5} and run.malformed == 1
    assert runs.get_eval_run("nope") is None
    public = run.public()
    assert list(public) == [c.name for c in eval_runs.columns]
    assert public["created_at"] == older.isoformat() and public["template_sha256"] is None
