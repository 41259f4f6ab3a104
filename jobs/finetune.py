"""Fine-tune a LoRA adapter with Ray Train, and register it for serving.

    python jobs/finetune.py --config configs/finetune/smollm2_faq.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/finetune.py --config configs/finetune/smollm2_faq.yaml

Steps, top to bottom: check the config against the cluster (unsloth needs GPUs), render
and tokenize the data (bad rows are reported and counted), open one MLflow run, train
on Ray Train workers (checkpoints every N steps; a failed worker restarts the group from
the last checkpoint), copy the adapter (and the merged model, on request) to storage,
register it in MLflow and the catalog, and print where it went.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from pydantic import ValidationError
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from welip.cluster import connect_ray
from welip.config import load_config
from welip.models import resolve_model_path
from welip.observability import configure_job_logging, inject_context, job_span, trace_id_of
from welip.store import Database, join_url, storage_url_from_env
from welip.training import (
    ADAPTER_DIR,
    BackendUnavailable,
    FinetuneConfig,
    check_backend,
    copy_tree,
    lineage,
    load_tokenizer,
    load_training_data,
    log_outputs,
    merge_adapter,
    register_adapter,
    sft_loop,
    start_mlflow_run,
    total_steps,
    train_storage,
    worker_env,
)

logger = logging.getLogger("welip.finetune")


def main(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train, store and register; returns what a caller needs (adapter id, URLs, losses).

    One trace per run (when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set): the job's span, a
    span per optimizer step of each worker under it.
    """
    run_id = uuid.uuid4().hex[:12]
    attributes = {
        "openinference.span.kind": "CHAIN",
        "welip.finetune.run_id": run_id,
        "llm.model_name": cfg.model,
    }
    with job_span("finetune", "finetune.run", attributes) as span:
        summary = finetune(cfg, run_id)
    trace_id = trace_id_of(span)
    if trace_id is not None:  # traced: where to find the run in the trace UI
        summary["trace_id"] = trace_id
        logger.info("trace %s", trace_id)
    return summary


def finetune(cfg: FinetuneConfig, run_id: str) -> dict[str, Any]:
    """The run itself, inside the job's span."""
    run_name = f"{cfg.name}-{run_id}"
    root = cfg.storage_url or join_url(storage_url_from_env(), "finetune")
    outputs_url = join_url(root, cfg.name, run_id)

    # 1. The cluster can run this backend; fail before any worker starts.
    check_backend(cfg, ray.cluster_resources().get("GPU", 0))

    # 2. Data: every row rendered with the chat template; unusable rows reported by row and id.
    tokenizer = load_tokenizer(resolve_model_path(cfg.model))
    data = load_training_data(cfg.dataset, tokenizer, fmt=cfg.dataset_format, max_seq_len=cfg.max_seq_len)
    for bad in data.malformed:
        logger.warning("row %d (id %s) skipped: %s", bad.row, bad.id, bad.error)
    steps = total_steps(cfg, len(data.examples), cfg.num_workers)
    logger.info(
        "%d examples (%d skipped), %d steps on %d %s worker(s)",
        len(data.examples),
        len(data.malformed),
        steps,
        cfg.num_workers,
        "GPU" if cfg.use_gpu else "CPU",
    )

    # 3. One MLflow run for the whole job; workers log into it by id, restarts included.
    tags = {**lineage(cfg, data.sha256), "welip.kind": "sft", "welip.finetune_run": run_id}
    mlflow_run_id, mlflow_uri = start_mlflow_run(cfg, run_name, tags) if cfg.mlflow else (None, None)

    # 4. Train on Ray Train workers.
    storage_path, storage_fs = train_storage(root)
    trainer = TorchTrainer(
        sft_loop,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "data": [ray.put([(e.input_ids, e.labels) for e in data.examples])],
            "total_steps": steps,
            "mlflow_run_id": mlflow_run_id,
            "mlflow_uri": mlflow_uri,
            "trace_context": inject_context(),
        },
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env()},
        ),
    )
    started = time.perf_counter()
    result = trainer.fit()
    train_s = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"training ended without a checkpoint: {result.error!r}")

    # 5. Outputs in storage: the adapter, and the merged model on request.
    adapter_url = join_url(outputs_url, ADAPTER_DIR)
    merged_url = join_url(outputs_url, "merged") if cfg.merge else None
    with result.checkpoint.as_directory() as ckpt, tempfile.TemporaryDirectory() as tmp:
        copy_tree(Path(ckpt) / ADAPTER_DIR, adapter_url)
        if merged_url is not None:
            merge_adapter(cfg.model, Path(ckpt) / ADAPTER_DIR, tmp)
            copy_tree(tmp, merged_url)
        if mlflow_run_id is not None:
            log_outputs(
                mlflow_run_id,
                Path(ckpt) / ADAPTER_DIR,
                cfg,
                "finetune_config.json",
                len(data.malformed),
                train_s,
            )

    # 6. Registered: an MLflow model version and the catalog row the gateway loads from.
    summary: dict[str, Any] = {
        "run_id": run_id,
        "adapter_url": adapter_url,
        "merged_url": merged_url,
        "mlflow_run_id": mlflow_run_id,
        "steps": steps,
        "examples": len(data.examples),
        "skipped_rows": len(data.malformed),
        "probe_loss_before": result.metrics.get("initial_probe_loss"),
        "probe_loss_after": result.metrics.get("probe_loss"),
        "resumed_from_step": result.metrics.get("resumed_from_step"),
        "train_s": round(train_s, 1),
    }
    if cfg.register_model:
        db = Database()
        try:
            db.upgrade()
            row = register_adapter(
                cfg, adapter_url, kind="sft", mlflow_run_id=mlflow_run_id, tags=tags, db=db
            )
        finally:
            db.dispose()
        summary["model"] = row["id"]
    print(json.dumps(summary, indent=2))
    return summary


def parse_args(argv: list[str]) -> FinetuneConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="Fine-tune YAML (configs/finetune/<name>.yaml).")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (max_steps=10).")
    args = parser.parse_args(argv)
    try:
        return load_config(FinetuneConfig, args.config, args.overrides)
    except (OSError, ValueError, ValidationError) as exc:
        parser.exit(2, f"error: invalid config {args.config}: {exc}\n")


if __name__ == "__main__":
    configure_job_logging()  # JSON lines on stderr, with the trace id
    config = parse_args(sys.argv[1:])
    connect_ray()
    try:
        main(config)
    except (BackendUnavailable, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
