"""Evaluation runs in the metadata database: one row per job run (samples live in storage)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from welip.store._database import Database, as_utc, utcnow
from welip.store._schema import eval_runs


@dataclass(frozen=True, kw_only=True)
class EvalRunRecord:
    """One evaluation job's run: a row of ``eval_runs`` (per-sample results live at ``results_url``)."""

    id: str
    created_at: datetime = field(default_factory=utcnow)
    task: str
    model: str
    target_kind: str
    """``endpoint`` or ``batch``."""
    status: str
    """``finished`` or ``failed``."""
    dataset_sha256: str | None = None
    template_sha256: str | None = None
    engine_version: str | None = None
    seed: int
    rows: int
    scored: int
    errors: int
    """Samples whose request failed for good."""
    malformed: int
    metrics: dict[str, float | None]
    """Metric name -> mean over the scored samples."""
    results_url: str
    mlflow_run_id: str | None = None
    error: str | None = None
    """Why a failed run failed."""

    def public(self) -> dict[str, Any]:
        """JSON-ready view (columns in table order, time as ISO text)."""
        return {**asdict(self), "created_at": self.created_at.isoformat()}


class EvalRunStore:
    """The ``eval_runs`` table: record a run, read one back, list recent ones."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    def record_eval_run(self, run: EvalRunRecord) -> None:
        """Insert one ``eval_runs`` row."""
        with self._engine.begin() as conn:
            conn.execute(eval_runs.insert().values(**asdict(run)))

    def get_eval_run(self, run_id: str) -> EvalRunRecord | None:
        """The eval run with this id, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(eval_runs.select().where(eval_runs.c.id == run_id)).mappings().first()
        return _eval_run_record(row) if row is not None else None

    def list_eval_runs(
        self, *, task: str | None = None, model: str | None = None, limit: int = 50
    ) -> list[EvalRunRecord]:
        """Eval runs, newest first, optionally of one task or model."""
        query = eval_runs.select().order_by(eval_runs.c.created_at.desc()).limit(limit)
        if task is not None:
            query = query.where(eval_runs.c.task == task)
        if model is not None:
            query = query.where(eval_runs.c.model == model)
        with self._engine.connect() as conn:
            return [_eval_run_record(r) for r in conn.execute(query).mappings()]


def _eval_run_record(row: Mapping[Any, Any]) -> EvalRunRecord:
    return EvalRunRecord(**{**row, "created_at": as_utc(row["created_at"])})
