"""The per-worker training loop of supervised LoRA fine-tuning (a Ray Train ``train_loop_per_worker``).

Every worker sees the same seeded order of examples each epoch and takes its own
slice, so a restarted run replays exactly the micro-batches it had not finished:
resuming from the checkpoint of step ``s`` skips the first ``s * grad_accum_steps``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentelemetry import trace

from welip.models import resolve_model_path
from welip.observability import extract_context, setup_tracing
from welip.training._config import FinetuneConfig
from welip.training._data import IGNORE_INDEX
from welip.training._loop import LoopInputs
from welip.training._model import ADAPTER_DIR, load_lora_model, load_tokenizer, save_adapter, torch_threads
from welip.training._registry import MlflowRun

_tracer = trace.get_tracer("welip.training")
logger = logging.getLogger("welip.finetune")

STATE_FILE = "welip_state.json"
OPTIMIZER_FILE = "optimizer.pt"
PROBE_EXAMPLES = 32  # examples the before/after loss is measured on


def micro_batches_per_epoch(n_examples: int, world_size: int, batch_size: int) -> int:
    """Micro-batches each worker runs per epoch (every worker the same number)."""
    per_worker = max(1, n_examples // world_size)
    return math.ceil(per_worker / batch_size)


def total_steps(cfg: FinetuneConfig, n_examples: int, world_size: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``epochs`` passes over the data."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    micro = micro_batches_per_epoch(n_examples, world_size, cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * micro / cfg.grad_accum_steps))


def micro_batch_indices(
    n_examples: int, rank: int, world_size: int, batch_size: int, seed: int, start: int
) -> Iterator[list[int]]:
    """Example indices of this worker's micro-batches, from micro-batch ``start`` on, forever.

    Epoch ``e`` shuffles with ``seed + e``; worker ``rank`` takes every ``world_size``-th
    example of the first ``world_size * (n // world_size)`` (all of them with one worker).
    """
    micro = micro_batches_per_epoch(n_examples, world_size, batch_size)
    per_worker = max(1, n_examples // world_size)
    epoch, offset = divmod(start, micro)
    while True:
        order = list(range(n_examples))
        random.Random(seed + epoch).shuffle(order)  # nosec B311 # reproducible data order, no secret
        mine = order[rank::world_size][:per_worker] if n_examples >= world_size else order
        for i in range(offset, micro):
            yield mine[i * batch_size : (i + 1) * batch_size]
        epoch, offset = epoch + 1, 0


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def sft_loop(loop_config: dict[str, Any]) -> None:
    """Train LoRA on this worker's share of the data; checkpoint and report as it goes."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    inputs = LoopInputs.from_ray(loop_config)
    cfg = FinetuneConfig.model_validate(inputs.config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    setup_tracing("finetune")
    parent = extract_context(inputs.trace_context)
    tokens_seen, tokens_per_s = _finetune_metrics()
    steps = inputs.total_steps
    examples: list[tuple[list[int], list[int]]] = ray.get(inputs.data)
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(torch_threads(cfg))
    torch.manual_seed(cfg.seed)

    model_path = resolve_model_path(cfg.model)  # per node: packaged models convert into its cache
    tokenizer = load_tokenizer(model_path)
    model = load_lora_model(cfg, model_path, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(cfg.warmup_steps, steps))

    # Resume: the adapter weights, optimizer and schedule of the last checkpoint.
    start_step, initial_probe = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        with checkpoint.as_directory() as ckpt:
            weights = load_file(str(Path(ckpt) / ADAPTER_DIR / "adapter_model.safetensors"))
            set_peft_model_state_dict(model, weights)
            saved = torch.load(Path(ckpt) / OPTIMIZER_FILE, map_location=device, weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = json.loads((Path(ckpt) / STATE_FILE).read_text())
            start_step, initial_probe = int(state["step"]), state.get("initial_probe_loss")
        if rank == 0:
            logger.info("resumed from the checkpoint of step %d", start_step)
    trained = ray.train.torch.prepare_model(model) if world > 1 else model
    trained.train()

    tracker = _Tracker(inputs.mlflow_run) if rank == 0 else None
    batches = micro_batch_indices(
        len(examples), rank, world, cfg.batch_size, cfg.seed, start_step * cfg.grad_accum_steps
    )
    # The loss on a fixed slice of the data before and after: a comparable number,
    # unlike single-batch losses.
    probe = [examples[i] for i in range(min(len(examples), PROBE_EXAMPLES))]
    if rank == 0 and initial_probe is None:
        initial_probe = probe_loss(model, probe, tokenizer.pad_token_id, device)
        if tracker is not None:
            tracker.log_one("probe_loss", initial_probe, 0)
    run_started = time.perf_counter()
    for step in range(start_step + 1, steps + 1):
        span = _tracer.start_span(
            "finetune.step",
            context=parent,
            attributes={"openinference.span.kind": "CHAIN", "welip.finetune.step": step, "welip.rank": rank},
        )
        started = time.perf_counter()
        group = [[examples[i] for i in next(batches)] for _ in range(cfg.grad_accum_steps)]
        label_tokens = sum(sum(1 for t in labs[1:] if t != IGNORE_INDEX) for mb in group for _, labs in mb)
        seen_tokens = sum(len(ids) for mb in group for ids, _ in mb)
        loss_sum = 0.0
        for i, micro in enumerate(group):
            batch = {k: v.to(device) for k, v in collate(micro, tokenizer.pad_token_id).items()}
            # Token-mean over the whole accumulation group, not a mean of micro-batch means.
            sync = i == len(group) - 1 or world == 1
            with _no_sync(trained, sync):
                logits = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = token_loss_sum(logits, batch["labels"]) / max(1, label_tokens)
                loss.backward()
            loss_sum += float(loss.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        metrics = {
            "step": step,
            "loss": loss_sum,
            "learning_rate": scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "tokens_per_s": seen_tokens * world / elapsed,
            "resumed_from_step": start_step,
            "initial_probe_loss": initial_probe,
        }
        span.set_attributes(
            {
                "welip.finetune.loss": loss_sum,
                "welip.finetune.tokens": seen_tokens,
                "llm.model_name": cfg.model,
            }
        )
        span.end()
        tokens_seen.inc(seen_tokens, tags={"model": cfg.model})
        if rank == 0:  # the whole group's rate, as MLflow's tokens_per_s
            tokens_per_s.set(metrics["tokens_per_s"], tags={"model": cfg.model})
        if rank == 0 and step == steps:
            metrics["probe_loss"] = probe_loss(model, probe, tokenizer.pad_token_id, device)
        if rank == 0 and (step % cfg.log_every_steps == 0 or step == steps):
            if tracker is not None:
                tracker.log(metrics)
            done = (step - start_step) / (time.perf_counter() - run_started)
            logger.info(
                "%s loss %.4f lr %.2e grad_norm %.3f tokens/s %.0f eta %.0fs",
                progress_bar(step, steps),
                loss_sum,
                metrics["learning_rate"],
                grad_norm,
                metrics["tokens_per_s"],
                (steps - step) / done if done > 0 else 0.0,
            )
        if step % cfg.checkpoint_every_steps == 0 or step == steps:
            _report_checkpoint(model, tokenizer, optimizer, scheduler, metrics, rank)


def _finetune_metrics() -> tuple[Any, Any]:
    """Prometheus series of a training worker (through Ray's metrics agent)."""
    from ray.util import metrics

    tokens = metrics.Counter(
        "welip_finetune_tokens",
        description="Tokens trained on (inputs of every micro-batch), by base model.",
        tag_keys=("model",),
    )
    rate = metrics.Gauge(
        "welip_finetune_tokens_per_s",
        description="Training throughput of the last optimizer step, all workers together.",
        tag_keys=("model",),
    )
    return tokens, rate


def _report_checkpoint(
    model: Any, tokenizer: Any, optimizer: Any, scheduler: Any, metrics: dict[str, Any], rank: int
) -> None:
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # LoRA weights are replicated: one copy is the checkpoint
            save_adapter(model, tokenizer, Path(tmp) / ADAPTER_DIR)
            torch.save(
                {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                Path(tmp) / OPTIMIZER_FILE,
            )
            (Path(tmp) / STATE_FILE).write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _linear_schedule(warmup_steps: int, steps: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup_steps))

    return factor


class _no_sync:
    """DDP's ``no_sync`` on accumulation micro-batches; nothing for a bare model."""

    def __init__(self, model: Any, sync: bool) -> None:
        self._ctx = None if sync or not hasattr(model, "no_sync") else model.no_sync()

    def __enter__(self) -> None:
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


class _Tracker:
    """Rank 0's MLflow logging into the run the driver opened (one run across restarts)."""

    def __init__(self, mlflow_run: MlflowRun | None) -> None:
        self._run_id = mlflow_run.run_id if mlflow_run else None
        self._client: Any = None
        if mlflow_run:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=mlflow_run.tracking_uri)

    def log(self, metrics: dict[str, Any]) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(metrics["step"])
        names = ("loss", "learning_rate", "grad_norm", "tokens_per_s", "probe_loss")
        batch = [Metric(name, float(metrics[name]), now, step) for name in names if name in metrics]
        self._client.log_batch(self._run_id, metrics=batch, synchronous=True)

    def log_one(self, name: str, value: float, step: int) -> None:
        if self._client is not None:
            self._client.log_metric(self._run_id, name, value, step=step)


def token_loss_sum(logits: Any, labels: Any) -> Any:
    """Summed next-token cross-entropy over labelled positions.

    The labels are shifted, not the logits: slicing ``logits[:, :-1]`` would copy the
    batch x length x vocabulary tensor (and its gradient) every step, which on a small
    model with a large vocabulary costs a tenth of the step.
    """
    import torch

    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def progress_bar(step: int, steps: int, width: int = 20) -> str:
    """``[#####...............]  5/20  25%``: a progress bar that reads well in job logs."""
    filled = width * step // max(1, steps)
    percent = 100 * step // max(1, steps)
    return f"[{'#' * filled}{'.' * (width - filled)}] {step:>{len(str(steps))}}/{steps} {percent:3d}%"


def probe_loss(model: Any, examples: list[tuple[list[int], list[int]]], pad_id: int, device: Any) -> float:
    """Token-mean loss of ``model`` on ``examples`` (no gradients, no collectives)."""
    import torch

    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 8):
            batch = {k: v.to(device) for k, v in collate(examples[i : i + 8], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total += float(token_loss_sum(logits, batch["labels"]))
            tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(1, tokens)
