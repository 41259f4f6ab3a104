"""Supervised LoRA fine-tuning, start to end: what ``jobs/finetune.py`` runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
from opentelemetry import trace

from welip.models import resolve_model_path
from welip.observability import inject_context
from welip.training._config import FinetuneConfig
from welip.training._data import load_training_data
from welip.training._loop import LoopInputs
from welip.training._model import ADAPTER_DIR, check_backend, load_tokenizer
from welip.training._pipeline import fit, new_run, publish_adapter
from welip.training._registry import lineage, start_mlflow_run
from welip.training._sft import sft_loop, total_steps

logger = logging.getLogger("welip.finetune")


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune a LoRA adapter on Ray Train workers, store it and register it for serving.

    Runs on the connected Ray cluster, inside the job's root span (``finetune.run``, which
    it tags with the run id and model); every worker's optimizer steps are spans under it.

    Returns:
        The run's summary: ``run_id``, ``adapter_url``, ``merged_url``, ``mlflow_run_id``,
        ``steps``, ``examples``, ``skipped_rows``, ``probe_loss_before``/``_after`` (the loss
        on a fixed slice of the data), ``resumed_from_step``, ``train_s`` and, when
        registered, ``model`` (the id clients send).

    Raises:
        BackendUnavailable: the cluster cannot run the backend (before any worker starts).
        FileNotFoundError: no dataset at ``cfg.dataset``.
        ValueError: no usable row in it.
    """
    run = new_run(cfg, "finetune")
    trace.get_current_span().set_attributes({"welip.finetune.run_id": run.id, "llm.model_name": cfg.model})

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
    tags = {**lineage(cfg, data.sha256), "welip.kind": "sft", "welip.finetune_run": run.id}
    mlflow_run = start_mlflow_run(cfg, run.name, tags) if cfg.mlflow else None

    # 4. Train on Ray Train workers (checkpoints every N steps; a restart resumes from the last).
    inputs = LoopInputs(
        config=cfg.model_dump(mode="json"),
        data=ray.put([(e.input_ids, e.labels) for e in data.examples]),
        total_steps=steps,
        mlflow_run=mlflow_run,
        trace_context=inject_context(),
    )
    started = time.perf_counter()
    trained = fit(sft_loop, inputs, cfg, run)
    train_s = time.perf_counter() - started

    # 5. The adapter in storage (and merged, on request), in MLflow and in the catalog.
    with trained.checkpoint.as_directory() as ckpt:
        published = publish_adapter(
            cfg,
            run,
            Path(ckpt) / ADAPTER_DIR,
            kind="sft",
            tags=tags,
            mlflow_run=mlflow_run,
            skipped_rows=len(data.malformed),
            train_s=train_s,
        )
    summary: dict[str, Any] = {
        "run_id": run.id,
        "adapter_url": published.adapter_url,
        "merged_url": published.merged_url,
        "mlflow_run_id": mlflow_run.run_id if mlflow_run else None,
        "steps": steps,
        "examples": len(data.examples),
        "skipped_rows": len(data.malformed),
        "probe_loss_before": trained.metrics.get("initial_probe_loss"),
        "probe_loss_after": trained.metrics.get("probe_loss"),
        "resumed_from_step": trained.metrics.get("resumed_from_step"),
        "train_s": round(train_s, 1),
    }
    if published.model is not None:
        summary["model"] = published.model
    return summary
