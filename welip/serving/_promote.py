"""Promotion: evaluate a candidate against what an alias serves now, switch only if it passes.

``welip promote CANDIDATE --alias NAME --gate SUITE --require "METRIC >= current"`` runs
the gate suite on both models through the gateway, checks every requirement, and only
then points the alias at the candidate (the gateway picks it up within
``catalog_refresh_s``; requests already running finish on the model they started on).
The decision, with both evaluation run ids, goes to MLflow and the audit log either way
(:mod:`welip.serving._gate`).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import subprocess  # nosec B404 # one call, an argument list without a shell (below)
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from welip.config import load_config
from welip.evaluation import EndpointTarget, EndpointUnavailable, SuiteConfig, check_endpoint
from welip.serving._gate import (
    GateRequirement,
    PromotionDecision,
    cli_audit_record,
    decide_promotion,
    record_promotion,
)
from welip.store import AliasRecord, AuditStore, CatalogStore, Database, EvalRunRecord, EvalRunStore

logger = logging.getLogger(__name__)


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
    # No shell: the operator's own `welip promote` arguments become this job's argument list.
    status = subprocess.run([*command, f"target.model={model}", f"run_id={run_id}"]).returncode  # nosec B603
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
        PromotionRefused: ``target`` is itself an alias (nothing switched).
    """
    catalog = CatalogStore(db)
    if catalog.get_alias(target) is not None:
        raise PromotionRefused(f"{target} is itself an alias; point {alias} at a model")
    user = getpass.getuser()
    row = catalog.set_alias(alias, target, updated_by=user)
    detail = {"target": target, "previous": row.previous}
    AuditStore(db).write_audit([cli_audit_record("welip alias set", alias, user, json.dumps(detail))])
    return row
