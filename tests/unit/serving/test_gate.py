"""Promotion gates: requirements, decisions, and what is recorded either way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest

from welip.serving import GateRequirement, decide_promotion, record_promotion
from welip.store import AuditStore, CatalogStore, Database, EvalRunRecord


def _run(run_id: str, status: str = "finished", errors: int = 0, **metrics: float | None) -> EvalRunRecord:
    counts = {"seed": 0, "rows": 1, "scored": 1, "malformed": 0}
    return EvalRunRecord(
        id=run_id,
        task="t",
        model="m",
        target_kind="endpoint",
        status=status,
        errors=errors,
        metrics=metrics,
        results_url="/r",
        **counts,
    )


@pytest.mark.parametrize(
    ("text", "metric", "op", "current", "value"),
    [
        ("token_f1 >= current", "token_f1", ">=", True, 0.0),
        ("exact_match > current + 0.02", "exact_match", ">", True, 0.02),
        ("rouge_l>=current-0.05", "rouge_l", ">=", True, -0.05),
        ("judge.mean >= 3.5", "judge.mean", ">=", False, 3.5),
        ("errors == 0", "errors", "==", False, 0.0),
    ],
)
def test_requirements_parse(text: str, metric: str, op: str, current: bool, value: float) -> None:
    req = GateRequirement.parse(text)
    assert (req.metric, req.op, req.against_current, req.value) == (metric, op, current, pytest.approx(value))


@pytest.mark.parametrize("text", ["token_f1", "token_f1 => current", "token_f1 >= best", "x >= current * 2"])
def test_malformed_requirements_are_refused_with_the_expected_shape(text: str) -> None:
    with pytest.raises(ValueError, match="METRIC OP current"):
        GateRequirement.parse(text)


def test_the_gate_passes_only_when_every_requirement_holds() -> None:
    reqs = [GateRequirement.parse("token_f1 >= current"), GateRequirement.parse("rouge_l >= 0.2")]
    ok = decide_promotion(
        "prod",
        "faq-v2",
        "faq-v1",
        "g.yaml",
        reqs,
        _run("a", token_f1=0.5, rouge_l=0.3),
        _run("b", token_f1=0.4),
    )
    assert ok.promoted and ok.checks == [
        "token_f1 >= current: 0.5000 >= 0.4000 -> pass",
        "rouge_l >= 0.2: 0.3000 >= 0.2000 -> pass",
    ]
    worse = decide_promotion(
        "prod",
        "faq-v2",
        "faq-v1",
        "g.yaml",
        reqs,
        _run("a", token_f1=0.3, rouge_l=0.3),
        _run("b", token_f1=0.4),
    )
    assert not worse.promoted and "FAIL" in worse.checks[0]
    margin = decide_promotion(
        "prod",
        "c",
        "d",
        "g.yaml",
        [GateRequirement.parse("token_f1 > current + 0.2")],
        _run("a", token_f1=0.5),
        _run("b", token_f1=0.4),
    )
    assert not margin.promoted


def test_a_missing_metric_or_a_broken_eval_run_fails_the_gate() -> None:
    req = [GateRequirement.parse("acc >= current")]
    missing = decide_promotion("p", "c", "d", "g", req, _run("a", token_f1=1.0), _run("b", acc=0.1))
    assert not missing.promoted and "has no metric acc" in missing.checks[0]
    errored = decide_promotion("p", "c", "d", "g", req, _run("a", errors=3, acc=1.0), _run("b", acc=0.1))
    assert not errored.promoted and "had 3 failed requests" in errored.checks[0]
    unscored = decide_promotion("p", "c", "d", "g", req, _run("a", acc=None), _run("b", acc=0.1))
    assert not unscored.promoted and "the candidate's run has no metric acc" in unscored.checks[0]


def test_recording_a_pass_switches_the_alias_and_logs_both_runs(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    db = Database(f"sqlite:///{tmp_path}/welip.db")
    db.upgrade()
    catalog, audit_log = CatalogStore(db), AuditStore(db)
    catalog.set_alias("prod", "faq-v1")
    decision = decide_promotion(
        "prod",
        "faq-v2",
        "faq-v1",
        "g.yaml",
        [GateRequirement.parse("token_f1 >= current")],
        _run("run-a", token_f1=0.5),
        _run("run-b", token_f1=0.4),
    )
    run_id = record_promotion(decision, db)
    alias = catalog.get_alias("prod")
    assert alias is not None and (alias.target, alias.previous) == ("faq-v2", "faq-v1")
    assert alias.decision is not None and alias.decision["candidate_eval_run"] == "run-a"
    [audit] = audit_log.query_audit(model="prod")
    assert (audit["route"], audit["status"], audit["principal_kind"]) == ("welip promote", 200, "cli")
    assert json.loads(audit["body"])["current_eval_run"] == "run-b"
    run = mlflow.get_run(run_id)
    assert run.data.tags["welip.eval_run.candidate"] == "run-a"
    assert run.data.tags["welip.eval_run.current"] == "run-b"
    assert run.data.metrics["candidate.token_f1"] == 0.5 and run.data.metrics["current.token_f1"] == 0.4


def test_a_failed_gate_is_recorded_and_switches_nothing(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/welip.db")
    db.upgrade()
    catalog, audit_log = CatalogStore(db), AuditStore(db)
    catalog.set_alias("prod", "faq-v1")
    decision = decide_promotion(
        "prod",
        "faq-v2",
        "faq-v1",
        "g.yaml",
        [GateRequirement.parse("token_f1 >= current")],
        _run("a", token_f1=0.1),
        _run("b", token_f1=0.4),
    )
    assert record_promotion(decision, db, mlflow_experiment=None) is None
    assert catalog.get_alias("prod").target == "faq-v1"  # type: ignore[union-attr]
    [audit] = audit_log.query_audit(model="prod")
    assert (audit["status"], audit["error_code"]) == (412, "gate_failed")


def test_a_switch_made_while_the_gate_ran_is_not_overwritten(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/welip.db")
    db.upgrade()
    catalog = CatalogStore(db)
    catalog.set_alias("prod", "faq-v1")
    decision = decide_promotion(
        "prod",
        "faq-v2",
        "faq-v1",
        "g.yaml",
        [GateRequirement.parse("token_f1 >= 0")],
        _run("a", token_f1=0.5),
        _run("b", token_f1=0.4),
    )
    catalog.set_alias("prod", "faq-v3")  # someone else, meanwhile
    with pytest.raises(ValueError, match="switched meanwhile"):
        record_promotion(decision, db, mlflow_experiment=None)
    assert catalog.get_alias("prod").target == "faq-v3"  # type: ignore[union-attr]
