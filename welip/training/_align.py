"""GRPO alignment rewarded by an evaluation metric, start to end: what ``jobs/align.py`` runs.

The reward is an evaluation metric of the answer against the row's ground truth
(:mod:`welip.training._rewards`), the same function in both backends: ``trl`` runs TRL's
``GRPOTrainer`` in Ray Train workers (:mod:`welip.training._grpo`), ``verl`` runs VeRL's
Ray trainer with vLLM rollouts (:mod:`welip.training._verl`). Rows are VeRL's
(:mod:`welip.training._align_data`).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from opentelemetry import trace

from welip.models import resolve_model_path
from welip.store import join_url
from welip.training._align_data import load_align_data, verl_rows, write_parquet
from welip.training._config import AlignConfig
from welip.training._grpo import run_trl
from welip.training._model import ADAPTER_DIR, BackendUnavailable, check_backend, load_tokenizer
from welip.training._pipeline import new_run, publish_adapter
from welip.training._registry import lineage, start_mlflow_run
from welip.training._verl import run_verl

logger = logging.getLogger("welip.align")


def align(cfg: AlignConfig) -> dict[str, Any]:
    """Align a model with GRPO (TRL or VeRL), store the LoRA adapter and register it for serving.

    Runs on the connected Ray cluster, inside the job's root span (``align.run``, which it
    tags with the run id and model).

    Returns:
        The run's summary: ``run_id``, ``rl_backend``, ``adapter_url``, ``merged_url``,
        ``train_data_url`` (verl: the prompts as parquet), ``mlflow_run_id``, ``steps``,
        ``prompts``, ``skipped_rows``, ``reward_metric``, ``reward_first_step``,
        ``reward_last_step``, ``reward_per_step`` (the mean reward of each step), ``train_s``
        and, when registered, ``model`` (the id clients send).

    Raises:
        BackendUnavailable: the cluster cannot run the RL backend (before any worker starts).
        FileNotFoundError: no dataset at ``cfg.dataset``.
        ValueError: no usable row in it.
    """
    run = new_run(cfg, "align")
    trace.get_current_span().set_attributes({"welip.align.run_id": run.id, "llm.model_name": cfg.model})

    # 1. The cluster can run this RL backend; fail before any worker starts.
    check_align_backend(cfg, ray.cluster_resources().get("GPU", 0))

    # 2. Data: VeRL-shaped prompts; unusable or too long rows reported by row and id.
    tokenizer = load_tokenizer(resolve_model_path(cfg.model))
    data = load_align_data(cfg.dataset, tokenizer=tokenizer, max_prompt_len=cfg.max_prompt_len)
    for bad in data.malformed:
        logger.warning("row %d (id %s) skipped: %s", bad.row, bad.id, bad.error)
    logger.info(
        "%d prompts (%d skipped), %d GRPO steps of %d prompts x %d completions on %d %s worker(s) with %s",
        len(data.prompts),
        len(data.malformed),
        cfg.max_steps,
        cfg.batch_size,
        cfg.num_generations,
        cfg.num_workers,
        "GPU" if cfg.use_gpu else "CPU",
        cfg.rl_backend,
    )

    # 3. One MLflow run for the whole job; workers (or VeRL's trainer) log into it by id.
    tags = {
        **lineage(cfg, data.sha256),
        "welip.kind": "grpo",
        "welip.align_run": run.id,
        "welip.rl_backend": cfg.rl_backend,
        "welip.reward_metric": cfg.reward_metric,
    }
    mlflow_run = start_mlflow_run(cfg, run.name, tags) if cfg.mlflow else None

    with tempfile.TemporaryDirectory() as tmp:
        # 4. Train: the adapter lands in a local folder either way.
        adapter_dir = Path(tmp) / ADAPTER_DIR
        train_url: str | None = None
        started = time.perf_counter()
        if cfg.rl_backend == "verl":
            train_url = join_url(run.outputs_url, "data", "train.parquet")
            write_parquet(verl_rows(data.prompts), train_url)
            rewards = run_verl(
                cfg, train_files=train_url, adapter_dir=adapter_dir, run_name=run.name, mlflow_run=mlflow_run
            )
            steps = cfg.max_steps
        else:
            rewards, steps = run_trl(
                cfg, data.prompts, run=run, adapter_dir=adapter_dir, mlflow_run=mlflow_run
            )
        train_s = time.perf_counter() - started

        # 5. The adapter in storage (and merged, on request), in MLflow and in the catalog.
        published = publish_adapter(
            cfg,
            run,
            adapter_dir,
            kind="grpo",
            tags=tags,
            mlflow_run=mlflow_run,
            skipped_rows=len(data.malformed),
            train_s=train_s,
        )
    summary: dict[str, Any] = {
        "run_id": run.id,
        "rl_backend": cfg.rl_backend,
        "adapter_url": published.adapter_url,
        "merged_url": published.merged_url,
        "train_data_url": train_url,
        "mlflow_run_id": mlflow_run.run_id if mlflow_run else None,
        "steps": steps,
        "prompts": len(data.prompts),
        "skipped_rows": len(data.malformed),
        "reward_metric": cfg.reward_metric,
        "reward_first_step": rewards[0] if rewards else None,
        "reward_last_step": rewards[-1] if rewards else None,
        "reward_per_step": rewards,
        "train_s": round(train_s, 1),
    }
    if published.model is not None:
        summary["model"] = published.model
    return summary


def check_align_backend(cfg: AlignConfig, cluster_gpus: float) -> None:
    """Refuse an RL backend the cluster cannot run, before any worker starts.

    Raises:
        BackendUnavailable: trl with unsloth, verl on CPU workers, verl not installed,
        or GPU workers on a cluster without as many GPUs.
    """
    if cfg.rl_backend == "trl" and cfg.backend == "unsloth":
        raise BackendUnavailable("rl_backend trl trains a PEFT adapter: set backend=peft")
    if cfg.rl_backend == "verl":
        if not cfg.use_gpu:
            raise BackendUnavailable(
                "rl_backend verl trains on GPUs (FSDP actors, vLLM rollouts): set use_gpu=true "
                "on a GPU cluster, or use rl_backend trl on CPU"
            )
        if importlib.util.find_spec("verl") is None:
            raise BackendUnavailable(
                "rl_backend verl needs the verl package on the cluster (pip install 'verl[vllm]', "
                "in the image the Helm chart's jobs.align runs); rl_backend trl runs without it"
            )
    check_backend(cfg, cluster_gpus)
