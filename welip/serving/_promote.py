"""Promotion: evaluate a candidate against what an alias serves now, switch only if it passes.

``welip promote CANDIDATE --alias NAME --gate SUITE --require "METRIC >= current"`` runs
the gate suite on both models through the gateway, checks every requirement, and only
then points the alias at the candidate (the gateway picks it up within
``catalog_refresh_s``; requests already running finish on the model they started on).
The decision, with both evaluation run ids, goes to MLflow and the audit log either way.
"""

from __future__ import annotations

import getpass
import json
import logging
import operator
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from welip.config import load_config
from welip.evaluation import EndpointTarget, EndpointUnavailable, SuiteConfig, check_endpoint
from welip.store import (
    AdapterRecord,
    AliasRecord,
    AuditStore,
    CatalogStore,
    Database,
    EvalRunRecord,
    EvalRunStore,
    use_mlflow,
)

logger = logging.getLogger(__name__)

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


class PromotionRefused(ValueError):
    """The promotion cannot start (bad input, or a gate that would mean nothing); nothing evaluated."""


class PromotionFailed(RuntimeError):
    """An evaluation failed, or the alias moved while the gate ran; nothing switched."""


@dataclass(frozen=True)
class PromotionRequest:
    """A promotion to decide, validated: what to promote, where, and the gate it must pass."""

    candidate: str
    """An adapter id (``<name>-v<N>``) or a served model id."""
    alias: str
    gate: Path
    """The evaluation suite; its target is the gateway's endpoint."""
    endpoint: EndpointTarget
    requirements: tuple[GateRequirement, ...]
    overrides: tuple[str, ...]
    """``key=value`` overrides of the gate suite."""

    @classmethod
    def parse(
        cls,
        candidate: str,
        *,
        alias: str,
        gate: Path,
        requirements: Sequence[str],
        overrides: Sequence[str] = (),
    ) -> PromotionRequest:
        """Parse the requirements and load the gate suite (with ``overrides``).

        Raises:
            PromotionRefused: a malformed requirement, or a suite that is invalid or
                does not evaluate through an endpoint.
        """
        try:
            parsed = tuple(GateRequirement.parse(r) for r in requirements)
            suite = load_config(SuiteConfig, gate, list(overrides))
        except (OSError, ValueError) as exc:
            raise PromotionRefused(str(exc)) from None
        if not isinstance(suite.target, EndpointTarget):
            raise PromotionRefused(
                "a gate suite evaluates through the gateway: its target must be an endpoint"
            )
        return cls(candidate, alias, gate, suite.target, parsed, tuple(overrides))


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote_candidate` decided, and the MLflow run that records it."""

    decision: PromotionDecision
    mlflow_run_id: str | None


def promote_candidate(
    request: PromotionRequest, *, db: Database, progress: Callable[[str], None] = logger.info
) -> PromotionResult:
    """Evaluate the candidate and the alias's current model on the gate; switch the alias only if it passes.

    Both evaluations run ``jobs/evaluate.py`` (from the working directory, joining the
    Ray cluster as it does by hand); the decision and both eval run ids go to the audit
    log and MLflow either way.

    Args:
        request: the validated promotion.
        db: the metadata database (aliases, eval runs, audit).
        progress: told a line as each evaluation starts.

    Raises:
        PromotionRefused: the alias or endpoint make the gate meaningless; nothing evaluated.
        PromotionFailed: an evaluation failed or the alias moved meanwhile; nothing switched.
    """
    catalog, eval_runs = CatalogStore(db), EvalRunStore(db)
    current = _current_model(catalog, request)
    _check_candidate_served(catalog, request)
    models = [request.candidate, *([current] if current else [])]
    runs = {model: _evaluate_on_gate(model, request, eval_runs, progress) for model in models}
    decision = decide_promotion(
        request.alias,
        request.candidate,
        current,
        str(request.gate),
        list(request.requirements),
        runs[request.candidate],
        runs.get(current or ""),
    )
    try:
        mlflow_run_id = record_promotion(decision, db)
    except ValueError as exc:  # the alias moved while we evaluated
        raise PromotionFailed(f"{exc}; nothing switched") from None
    return PromotionResult(decision, mlflow_run_id)


def _current_model(catalog: CatalogStore, request: PromotionRequest) -> str | None:
    row = catalog.get_alias(request.alias)
    current = row.target if row is not None else None
    if current == request.candidate:
        raise PromotionRefused(f"{request.alias} already points at {request.candidate}")
    if current is None and any(r.against_current for r in request.requirements):
        raise PromotionRefused(
            f"alias {request.alias} does not exist yet, so `current` means nothing: create it with "
            f"`welip alias set {request.alias} MODEL`, or require absolute values"
        )
    return current


def _check_candidate_served(catalog: CatalogStore, request: PromotionRequest) -> None:
    try:
        served = check_endpoint(request.endpoint.model_copy(update={"model": request.candidate}))
    except EndpointUnavailable as exc:
        raise PromotionRefused(str(exc)) from None
    if request.alias in served and catalog.get_alias(request.alias) is None:
        raise PromotionRefused(f"{request.alias} is a model the gateway serves, not an alias")


def _evaluate_on_gate(
    model: str, request: PromotionRequest, eval_runs: EvalRunStore, progress: Callable[[str], None]
) -> EvalRunRecord:
    run_id = uuid.uuid4().hex
    progress(f"evaluating {model} on {request.gate} (eval run {run_id})")
    command = [sys.executable, "jobs/evaluate.py", "--config", str(request.gate), *request.overrides]
    status = subprocess.run([*command, f"target.model={model}", f"run_id={run_id}"]).returncode
    found = eval_runs.get_eval_run(run_id)
    if status != 0 or found is None:
        raise PromotionFailed(f"the evaluation of {model} failed (exit {status}); nothing switched")
    return found


def wait_until_routed(endpoint: EndpointTarget, alias: str, model: str, wait_s: float) -> bool:
    """Poll the gateway until ``/v1/models/{alias}`` names ``model`` as its root; False after ``wait_s``."""
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)
    key = os.environ.get(endpoint.api_key_env or "") if endpoint.api_key_env else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            card = httpx.get(f"{endpoint.base_url.rstrip('/')}/models/{alias}", headers=headers, timeout=5)
            if card.status_code == 200 and card.json().get("root") == model:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def set_alias_ungated(db: Database, alias: str, target: str) -> AliasRecord:
    """Point ``alias`` at ``target`` without a gate (first setup, rollback), and audit it.

    Returns the alias's record.

    Raises:
        ValueError: ``target`` is itself an alias.
    """
    catalog = CatalogStore(db)
    if catalog.get_alias(target) is not None:
        raise ValueError(f"{target} is itself an alias; point {alias} at a model")
    user = getpass.getuser()
    row = catalog.set_alias(alias, target, updated_by=user)
    detail = {"target": target, "previous": row.previous}
    AuditStore(db).write_audit([_cli_audit_record("welip alias set", alias, user, json.dumps(detail))])
    return row


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
        decided_at=datetime.now(timezone.utc).isoformat(),
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
    audit = _cli_audit_record(
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


def _cli_audit_record(
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
        "ts": datetime.now(timezone.utc),
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
