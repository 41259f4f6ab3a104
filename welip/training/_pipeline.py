"""The steps fine-tuning and alignment share, written once.

:func:`finetune <welip.training.finetune>` and :func:`align <welip.training.align>` read
top to bottom: :func:`new_run`, check the backend, read the data, open the MLflow run,
train (:func:`fit` on Ray Train, or VeRL's own trainer), then :func:`publish_adapter`:
the adapter copied to storage, merged on request, logged to MLflow and registered in
MLflow and the catalog the gateway loads from.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from welip.store import Database, join_url, storage_url_from_env
from welip.training._config import _Common
from welip.training._loop import LoopInputs
from welip.training._model import ADAPTER_DIR, merge_adapter
from welip.training._registry import (
    MlflowRun,
    copy_tree,
    log_outputs,
    register_adapter,
    train_storage,
    worker_env,
)

if TYPE_CHECKING:
    from ray.train import Checkpoint


@dataclass(frozen=True)
class TrainingRun:
    """One run of a training job: its id, its name in Ray Train and MLflow, where its files go."""

    area: str
    """``finetune`` or ``align``: the storage folder and the name of the config in MLflow."""
    id: str
    name: str
    """``<cfg.name>-<id>``: Ray Train's run and the MLflow run."""
    storage_url: str
    """Ray Train's checkpoints: ``cfg.storage_url``, else ``$WELIP_STORAGE_URL/<area>``."""
    outputs_url: str
    """``<storage_url>/<cfg.name>/<id>``: the adapter, the merged model, converted data."""


def new_run(cfg: _Common, area: str) -> TrainingRun:
    """A fresh run of ``cfg`` (a new 12-hex-digit id); nothing is written yet."""
    run_id = uuid.uuid4().hex[:12]
    root = cfg.storage_url or join_url(storage_url_from_env(), area)
    return TrainingRun(area, run_id, f"{cfg.name}-{run_id}", root, join_url(root, cfg.name, run_id))


@dataclass(frozen=True)
class Trained:
    """What a Ray Train run left: its last checkpoint (the adapter under ``adapter/``) and metrics."""

    checkpoint: Checkpoint
    metrics: dict[str, Any]


def fit(
    loop: Callable[[dict[str, Any]], None], inputs: LoopInputs, cfg: _Common, run: TrainingRun
) -> Trained:
    """Run ``loop`` on ``cfg.num_workers`` Ray Train workers and wait for it.

    GPU workers talk NCCL, CPU workers gloo; a failed worker restarts the group
    (``cfg.max_failures`` times) from the last checkpoint; ``cfg.keep_checkpoints``
    checkpoints stay under ``run.storage_url``; workers get this shell's storage,
    tracking and model cache variables (:func:`worker_env`).

    Raises:
        RuntimeError: training ended without a checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage_path, storage_fs = train_storage(run.storage_url)
    # Ray Train V2's configs (its default): mypy reads ray.train's V1 RunConfig, which has
    # no worker_runtime_env.
    trainer = TorchTrainer(
        loop,
        train_loop_config=inputs.to_ray(),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env()},  # type: ignore[call-arg]
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training ended without a checkpoint: {result.error!r}")
    return Trained(result.checkpoint, dict(result.metrics or {}))


@dataclass(frozen=True)
class PublishedAdapter:
    """Where a run's adapter went."""

    adapter_url: str
    merged_url: str | None
    """The base model with the adapter merged in (``merge: true``), else None."""
    model: str | None
    """The catalog id clients send (``<name>-v<version>``); None with ``register_model: false``."""


def publish_adapter(
    cfg: _Common,
    run: TrainingRun,
    adapter_dir: Path,
    *,
    kind: str,
    tags: dict[str, str],
    mlflow_run: MlflowRun | None,
    skipped_rows: int,
    train_s: float,
) -> PublishedAdapter:
    """The trained adapter in ``adapter_dir`` to storage, MLflow and the catalog.

    1. The adapter to ``<outputs_url>/adapter``; on ``cfg.merge``, the merged model to
       ``<outputs_url>/merged``.
    2. With an MLflow run: the adapter and the config (``<area>_config.json``) as its
       artifacts, ``skipped_rows`` and ``train_s`` as its metrics.
    3. On ``cfg.register_model``: an MLflow model version and the catalog row the
       gateway loads from (:func:`register_adapter`, ``kind`` ``sft`` or ``grpo``, the
       lineage ``tags``).
    """
    adapter_url = join_url(run.outputs_url, ADAPTER_DIR)
    merged_url = join_url(run.outputs_url, "merged") if cfg.merge else None
    copy_tree(adapter_dir, adapter_url)
    if merged_url is not None:
        with tempfile.TemporaryDirectory() as merged_dir:
            merge_adapter(cfg.model, adapter_dir, merged_dir)
            copy_tree(merged_dir, merged_url)
    if mlflow_run is not None:
        log_outputs(mlflow_run.run_id, adapter_dir, cfg, f"{run.area}_config.json", skipped_rows, train_s)
    model = None
    if cfg.register_model:
        db = Database()
        try:
            db.upgrade()
            mlflow_run_id = mlflow_run.run_id if mlflow_run else None
            row = register_adapter(cfg, adapter_url, kind=kind, mlflow_run_id=mlflow_run_id, tags=tags, db=db)
        finally:
            db.dispose()
        model = row.id
    return PublishedAdapter(adapter_url, merged_url, model)
