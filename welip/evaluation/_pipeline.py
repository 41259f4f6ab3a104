"""The Ray Data pipeline of an evaluation run: inference, scoring and judging as one stream.

Stages are chained lazily and run together: a batch is scored and judged while later
batches are still being answered. Rows carry samples as JSON strings (see ``_stages``).
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

import ray

from welip.evaluation._config import EndpointTarget, SuiteConfig
from welip.evaluation._stages import EndpointInference, JudgeStage, batch_processor, score_batch

if TYPE_CHECKING:
    from ray.data import Dataset


def run_pipeline(
    cfg: SuiteConfig, samples: list[dict[str, Any]], trace_context: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Inference, scoring and judging over Ray Data; the scored samples in file order.

    ``trace_context``: the job span's carrier, so each stage's batches are its children.
    """
    rows = [{"sample": json.dumps(s, ensure_ascii=False)} for s in samples]
    batch_size = cfg.target.batch_size
    ds: Dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    ds = _inference(ds, cfg, trace_context)
    scoring = {
        "metrics": cfg.metric_list,
        "suite": cfg.task,
        "model": cfg.model,
        "trace_context": trace_context,
    }
    # Ray's annotations do not know that fn_kwargs fills score_batch's other parameters.
    ds = ds.map_batches(score_batch, fn_kwargs=scoring, batch_size=256, num_cpus=0.25)  # type: ignore[arg-type]
    judges = [m.judge.target for m in cfg.metric_list if m.judge is not None]
    if judges:
        ds = ds.map_batches(
            JudgeStage,
            fn_constructor_kwargs={"metrics": cfg.metric_list, "trace_context": trace_context},
            **request_stage(judges, min(t.batch_size for t in judges)),
        )
    return sorted((json.loads(row["sample"]) for row in ds.iter_rows()), key=lambda s: s["row"])


def _inference(ds: Dataset, cfg: SuiteConfig, trace_context: dict[str, str] | None) -> Dataset:
    """The inference stage: requests to the target endpoint, or vLLM inside the job."""
    if isinstance(cfg.target, EndpointTarget):
        return ds.map_batches(
            EndpointInference,
            fn_constructor_kwargs={
                "target": cfg.target,
                "generation": cfg.generation_kwargs,
                "seed": cfg.seed,
                "trace_context": trace_context,
            },
            **request_stage([cfg.target], cfg.target.batch_size),
        )
    processor = batch_processor(cfg.target, cfg.generation_kwargs, cfg.seed, chat=cfg.mode == "chat")
    return processor(ds)


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
