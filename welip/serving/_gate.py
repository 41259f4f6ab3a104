"""Promotion gates: requirements on evaluation metrics, the decision they make, and its record.

A gate compares the candidate's eval run with the current model's on the same suite
(:class:`GateRequirement`: ``METRIC >= current``, ``METRIC > current + 0.02``,
``METRIC >= 0.5``); :func:`decide_promotion` checks them all, and
:func:`record_promotion` switches the alias only when the decision passed, writing the
decision to the audit log and MLflow either way.
"""

from __future__ import annotations

import getpass
import json
import operator
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from welip.store import AdapterRecord, AuditStore, CatalogStore, Database, EvalRunRecord, use_mlflow

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
_REQUIREMENT = re.compile(
    r"^\s*(?P<metric>[A-Za-z0-9_.-]+)\s*(?P<op>>=|<=|==|>|<)\s*"
    r"(?:(?P<current>current)\s*(?:(?P<sign>[+-])\s*(?P<margin>\d+(?:\.\d+)?))?|(?P<value>-?\d+(?:\.\d+)?))\s*$"
)


@dataclass(frozen=True)
class GateRequirement:
    """``metric op current [± margin]`` or ``metric op value``."""

    metric: str
    op: str
    against_current: bool
    value: float
    text: str

    @classmethod
    def parse(cls, text: str) -> GateRequirement:
        """Parse ``"token_f1 >= current"``, ``"exact_match > current + 0.02"`` or ``"acc >= 0.5"``.

        Raises:
            ValueError: the text has another shape.
        """
        match = _REQUIREMENT.match(text)
        if match is None:
            raise ValueError(
                f"requirement {text!r} is not `METRIC OP current [+|- MARGIN]` or `METRIC OP NUMBER` "
                f"(OP one of {', '.join(_OPS)})"
            )
        if match["current"]:
            margin = float(match["margin"] or 0)
            value = -margin if match["sign"] == "-" else margin
        else:
            value = float(match["value"])
        return cls(match["metric"], match["op"], bool(match["current"]), value, text.strip())

    def check(self, candidate: dict[str, float], current: dict[str, float] | None) -> tuple[bool, str]:
        """Whether the candidate's metrics meet this requirement, and a line saying why."""
        if self.metric not in candidate:
            return False, f"{self.text}: the candidate's run has no metric {self.metric}"
        threshold = self.value
        if self.against_current:
            if current is None or self.metric not in current:
                return False, f"{self.text}: the current model's run has no metric {self.metric}"
            threshold += current[self.metric]
        passed = _OPS[self.op](candidate[self.metric], threshold)
        verdict = "pass" if passed else "FAIL"
        return passed, f"{self.text}: {candidate[self.metric]:.4f} {self.op} {threshold:.4f} -> {verdict}"


@dataclass
class PromotionDecision:
    """What a promotion decided, and from which evidence."""

    alias: str
    candidate: str
    current: str | None
    gate: str
    requirements: list[str]
    candidate_eval_run: str
    current_eval_run: str | None
    candidate_metrics: dict[str, float]
    current_metrics: dict[str, float] | None
    checks: list[str] = field(default_factory=list)
    promoted: bool = False
    decided_at: str = ""
    decided_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(
    alias: str,
    candidate: str,
    current: str | None,
    gate: str,
    requirements: list[GateRequirement],
    candidate_run: EvalRunRecord,
    current_run: EvalRunRecord | None,
) -> PromotionDecision:
    """Check every requirement against the two eval runs."""
    decision = PromotionDecision(
        alias=alias,
        candidate=candidate,
        current=current,
        gate=gate,
        requirements=[r.text for r in requirements],
        candidate_eval_run=candidate_run.id,
        current_eval_run=current_run.id if current_run else None,
        candidate_metrics=_scored(candidate_run),
        current_metrics=_scored(current_run) if current_run else None,
        decided_at=datetime.now(UTC).isoformat(),
        decided_by=getpass.getuser(),
    )
    passed = True
    for problem in _run_problems(candidate_run, "candidate") + _run_problems(current_run, "current"):
        decision.checks.append(problem)
        passed = False
    for requirement in requirements:
        ok, line = requirement.check(decision.candidate_metrics, decision.current_metrics)
        decision.checks.append(line)
        passed = passed and ok
    decision.promoted = passed
    return decision


def _scored(run: EvalRunRecord) -> dict[str, float]:
    # A metric no sample was scored on has no mean: the gate sees it as missing.
    return {name: mean for name, mean in run.metrics.items() if mean is not None}


def _run_problems(run: EvalRunRecord | None, who: str) -> list[str]:
    if run is None:
        return []
    if run.status != "finished":
        return [f"the {who} model's eval run {run.id} {run.status}"]
    if run.errors:
        return [f"the {who} model's eval run {run.id} had {run.errors} failed requests"]
    return []


def record_promotion(
    decision: PromotionDecision, db: Database, *, mlflow_experiment: str | None = "welip-promotions"
) -> str | None:
    """Write the decision to the audit log (and the alias row when promoted) and to MLflow.

    The alias switch checks that nobody switched it meanwhile. Returns the MLflow run id.
    """
    catalog = CatalogStore(db)
    body = json.dumps(decision.as_dict())
    if decision.promoted:
        catalog.set_alias(
            decision.alias,
            decision.candidate,
            updated_by=decision.decided_by,
            decision=decision.as_dict(),
            expect=decision.current,
        )
    audit = cli_audit_record(
        "welip promote",
        decision.alias,
        decision.decided_by,
        body,
        request_id=f"promote-{decision.candidate_eval_run[:12]}",
        status=200 if decision.promoted else 412,
        error_code=None if decision.promoted else "gate_failed",
    )
    AuditStore(db).write_audit([audit])
    return (
        _log_mlflow(decision, mlflow_experiment, catalog.get_adapter(decision.candidate))
        if mlflow_experiment
        else None
    )


def _log_mlflow(decision: PromotionDecision, experiment: str, adapter: AdapterRecord | None) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    use_mlflow(experiment)
    tags = {
        "welip.alias": decision.alias,
        "welip.candidate": decision.candidate,
        "welip.current": decision.current or "",
        "welip.promoted": str(decision.promoted).lower(),
        "welip.eval_run.candidate": decision.candidate_eval_run,
        "welip.eval_run.current": decision.current_eval_run or "",
    }
    with mlflow.start_run(run_name=f"promote-{decision.alias}-{int(time.time())}", tags=tags) as run:
        mlflow.log_params({"gate": decision.gate, "requirements": json.dumps(decision.requirements)})
        mlflow.log_metrics({f"candidate.{k}": v for k, v in decision.candidate_metrics.items()})
        if decision.current_metrics:
            mlflow.log_metrics({f"current.{k}": v for k, v in decision.current_metrics.items()})
        mlflow.log_dict(decision.as_dict(), "decision.json")
    # The candidate's registered MLflow version carries the gate's evidence, and the
    # alias when it passed.
    version = adapter.lineage.get("mlflow_model_version") if adapter is not None else None
    if adapter is not None and version:
        name = adapter.name
        client = MlflowClient()
        try:
            client.set_model_version_tag(name, version, f"welip.gate.{decision.alias}", json.dumps(tags))
            if decision.promoted:
                client.set_registered_model_alias(name, decision.alias, version)
        except MlflowException:
            pass  # an adapter registered with MLflow off has no version to tag
    return str(run.info.run_id)


def cli_audit_record(
    route: str,
    model: str,
    principal: str,
    body: str,
    *,
    request_id: str | None = None,
    status: int = 200,
    error_code: str | None = None,
) -> dict[str, Any]:
    """An audit record of a change made from the command line (not a gateway request)."""
    return {
        "id": uuid.uuid4().hex,
        "ts": datetime.now(UTC),
        "request_id": request_id or f"cli-{uuid.uuid4().hex[:12]}",
        "principal": principal,
        "principal_kind": "cli",
        "method": "CLI",
        "route": route,
        "model": model,
        "status": status,
        "error_code": error_code,
        "latency_ms": 0.0,
        "body": body,
    }
