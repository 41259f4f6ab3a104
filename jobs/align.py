"""Align a model with GRPO, rewarded by an evaluation metric, and register the LoRA adapter.

    python jobs/align.py --config configs/align/smollm2_arithmetic.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/align.py --config configs/align/verl_gpu.yaml

Steps, top to bottom: check the RL backend against the cluster (verl needs its package
and GPUs), read the VeRL-shaped prompts (bad rows are reported and counted), open one
MLflow run, train (trl: TRL's GRPOTrainer on a Ray Train worker group; verl: VeRL's Ray
trainer with vLLM rollouts on the data converted to parquet in storage), copy the adapter
(and the merged model, on request) to storage, register it in MLflow and the catalog, and
print where it went with the mean reward of the first and last steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from pydantic import ValidationError
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from welip.cluster import connect_ray
from welip.config import load_config
from welip.models import resolve_model_path
from welip.observability import configure_job_logging
from welip.store import Database, join_url, storage_url_from_env
from welip.training import (
    ADAPTER_DIR,
    AlignConfig,
    BackendUnavailable,
    check_align_backend,
    copy_tree,
    grpo_loop,
    lineage,
    load_align_data,
    load_tokenizer,
    log_outputs,
    merge_adapter,
    register_adapter,
    run_verl,
    start_mlflow_run,
    train_storage,
    trl_rows,
    verl_rows,
    worker_env,
    write_parquet,
)

logger = logging.getLogger("welip.align")


def main(cfg: AlignConfig) -> dict[str, Any]:
    """Train, store and register; returns what a caller needs (adapter id, URLs, rewards)."""
    run_id = uuid.uuid4().hex[:12]
    run_name = f"{cfg.name}-{run_id}"
    root = cfg.storage_url or join_url(storage_url_from_env(), "align")
    outputs_url = join_url(root, cfg.name, run_id)

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
        "welip.align_run": run_id,
        "welip.rl_backend": cfg.rl_backend,
        "welip.reward_metric": cfg.reward_metric,
    }
    mlflow_run_id, mlflow_uri = start_mlflow_run(cfg, run_name, tags) if cfg.mlflow else (None, None)

    # 4. Train: the adapter lands in a local folder either way.
    adapter_url = join_url(outputs_url, ADAPTER_DIR)
    merged_url = join_url(outputs_url, "merged") if cfg.merge else None
    train_url: str | None = None
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = Path(tmp) / ADAPTER_DIR
        started = time.perf_counter()
        if cfg.rl_backend == "verl":
            train_url = join_url(outputs_url, "data", "train.parquet")
            write_parquet(verl_rows(data.prompts), train_url)
            rewards = run_verl(
                cfg,
                train_files=train_url,
                adapter_dir=adapter_dir,
                run_name=run_name,
                mlflow_run_id=mlflow_run_id,
                mlflow_uri=mlflow_uri,
            )
            steps = cfg.max_steps
        else:
            trainer = TorchTrainer(
                grpo_loop,
                train_loop_config={
                    "config": cfg.model_dump(mode="json"),
                    "data": [ray.put(trl_rows(data.prompts))],
                    "mlflow_run_id": mlflow_run_id,
                    "mlflow_uri": mlflow_uri,
                },
                torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
                scaling_config=ScalingConfig(
                    num_workers=cfg.num_workers,
                    use_gpu=cfg.use_gpu,
                    resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
                ),
                run_config=run_config(cfg, run_name, root),
            )
            result = trainer.fit()
            if result.checkpoint is None:
                raise RuntimeError(f"training ended without a checkpoint: {result.error!r}")
            with result.checkpoint.as_directory() as ckpt:
                shutil.copytree(Path(ckpt) / ADAPTER_DIR, adapter_dir)
            rewards, steps = list(result.metrics.get("rewards") or []), int(result.metrics["step"])
        train_s = time.perf_counter() - started

        # 5. Outputs in storage: the adapter, and the merged model on request.
        copy_tree(adapter_dir, adapter_url)
        if merged_url is not None:
            merged_dir = Path(tmp) / "merged"
            merge_adapter(cfg.model, adapter_dir, merged_dir)
            copy_tree(merged_dir, merged_url)
        if mlflow_run_id is not None:
            log_outputs(mlflow_run_id, adapter_dir, cfg, "align_config.json", len(data.malformed), train_s)

    # 6. Registered: an MLflow model version and the catalog row the gateway loads from.
    summary: dict[str, Any] = {
        "run_id": run_id,
        "rl_backend": cfg.rl_backend,
        "adapter_url": adapter_url,
        "merged_url": merged_url,
        "train_data_url": train_url,
        "mlflow_run_id": mlflow_run_id,
        "steps": steps,
        "prompts": len(data.prompts),
        "skipped_rows": len(data.malformed),
        "reward_metric": cfg.reward_metric,
        "reward_first_step": rewards[0] if rewards else None,
        "reward_last_step": rewards[-1] if rewards else None,
        "reward_per_step": rewards,
        "train_s": round(train_s, 1),
    }
    if cfg.register_model:
        db = Database()
        try:
            db.upgrade()
            row = register_adapter(
                cfg, adapter_url, kind="grpo", mlflow_run_id=mlflow_run_id, tags=tags, db=db
            )
        finally:
            db.dispose()
        summary["model"] = row["id"]
    print(json.dumps(summary, indent=2))
    return summary


def run_config(cfg: AlignConfig, run_name: str, root: str) -> RunConfig:
    """Ray Train's run: storage for the final checkpoint, restarts, the workers' environment."""
    storage_path, storage_fs = train_storage(root)
    return RunConfig(
        name=run_name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        worker_runtime_env={"env_vars": worker_env()},
    )


def parse_args(argv: list[str]) -> AlignConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="Align YAML (configs/align/<name>.yaml).")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (max_steps=3).")
    args = parser.parse_args(argv)
    try:
        return load_config(AlignConfig, args.config, args.overrides)
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
