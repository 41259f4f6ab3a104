"""GRPO with TRL: ``GRPOTrainer`` in a Ray Train worker group (``rl_backend: trl``).

:func:`run_trl` starts the group; in each worker :func:`grpo_loop` runs TRL's trainer
with a PEFT LoRA adapter; rank 0 logs TRL's per-step numbers into the MLflow run the
driver opened and reports the adapter as the final checkpoint. TRL's optimizer state is
not checkpointed mid-run: a restarted group trains from the start (this backend is for
small models).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from welip.models import resolve_model_path
from welip.training._align_data import Prompt, trl_rows
from welip.training._config import AlignConfig
from welip.training._loop import LoopInputs
from welip.training._model import ADAPTER_DIR, load_tokenizer, lora_config, save_adapter, torch_threads
from welip.training._pipeline import TrainingRun, fit
from welip.training._registry import MlflowRun
from welip.training._sft import STATE_FILE, progress_bar

logger = logging.getLogger("welip.align")


def run_trl(
    cfg: AlignConfig,
    prompts: list[Prompt],
    *,
    run: TrainingRun,
    adapter_dir: Path,
    mlflow_run: MlflowRun | None,
) -> tuple[list[float], int]:
    """TRL's GRPO on Ray Train workers over ``prompts``; the adapter lands in ``adapter_dir``.

    Returns:
        The mean reward of each step, and the optimizer steps taken.
    """
    import ray

    inputs = LoopInputs(
        config=cfg.model_dump(mode="json"),
        data=ray.put(trl_rows(prompts)),
        total_steps=cfg.max_steps,
        mlflow_run=mlflow_run,
    )
    trained = fit(grpo_loop, inputs, cfg, run)
    with trained.checkpoint.as_directory() as ckpt:
        shutil.copytree(Path(ckpt) / ADAPTER_DIR, adapter_dir)
    return list(trained.metrics.get("rewards") or []), int(trained.metrics["step"])


def grpo_loop(loop_config: dict[str, Any]) -> None:
    """Train a LoRA adapter with TRL's GRPO on this worker; report it as the final checkpoint."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from welip.training._rewards import reward_function

    inputs = LoopInputs.from_ray(loop_config)
    cfg = AlignConfig.model_validate(inputs.config)
    rank = ray.train.get_context().get_world_rank()
    rows: list[dict[str, Any]] = ray.get(inputs.data)
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    if not on_gpu:
        torch.set_num_threads(torch_threads(cfg))

    model_path = resolve_model_path(cfg.model)  # per node: packaged models convert into its cache
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "left"  # prompts are left-padded for generation
    model = AutoModelForCausalLM.from_pretrained(  # nosec B615 # a local directory, never the Hub
        model_path, dtype=torch.bfloat16 if on_gpu else torch.float32, local_files_only=True
    )
    lora = lora_config(cfg)
    steps = _StepLog(inputs.mlflow_run if rank == 0 else None, cfg.max_steps)
    reward_funcs: list[Any] = [reward_function(cfg.reward_metric, cfg.reward_kwargs)]
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            max_steps=cfg.max_steps,
            # TRL's batch counts completions: every prompt of the step with its whole group.
            per_device_train_batch_size=cfg.batch_size * cfg.num_generations,
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_len,
            temperature=cfg.temperature,
            beta=cfg.beta,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
            max_grad_norm=cfg.max_grad_norm,
            logging_steps=cfg.log_every_steps,
            report_to=[],
            use_cpu=not on_gpu,
            bf16=on_gpu,
            seed=cfg.seed,
            save_strategy="no",
            disable_tqdm=True,
            ddp_find_unused_parameters=False,  # every LoRA weight is in every forward
            use_vllm=False,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[steps.callback()],
        )
        trainer.remove_callback(PrinterCallback)  # _StepLog writes the step lines
        trainer.train()
    metrics = {
        "step": trainer.state.global_step,
        "rewards": [reward for _, reward in steps.rewards],
        "reward_first": steps.rewards[0][1] if steps.rewards else None,
        "reward_last": steps.rewards[-1][1] if steps.rewards else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # LoRA weights are replicated: one copy is the checkpoint
            save_adapter(trainer.model, load_tokenizer(model_path), Path(tmp) / ADAPTER_DIR)
            (Path(tmp) / STATE_FILE).write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


class _StepLog:
    """Rank 0's per-step record: TRL's numbers into the driver's MLflow run, and the rewards."""

    def __init__(self, mlflow_run: MlflowRun | None, max_steps: int) -> None:
        self.rewards: list[tuple[int, float]] = []
        self._run_id = mlflow_run.run_id if mlflow_run else None
        self._max_steps = max_steps
        self._client: Any = None
        if mlflow_run:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=mlflow_run.tracking_uri)

    def log(self, step: int, logs: dict[str, Any]) -> None:
        numbers = {
            key: float(value)
            for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
        if "reward" in numbers:
            self.rewards.append((step, numbers["reward"]))
            logger.info(
                "%s reward %.3f (std %.3f) loss %.4f",
                progress_bar(step, self._max_steps),
                numbers["reward"],
                numbers.get("reward_std", 0.0),
                numbers.get("loss", 0.0),
            )
        if self._client is None or not numbers:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in numbers.items()]
        self._client.log_batch(self._run_id, metrics=batch, synchronous=True)

    def callback(self) -> Any:
        """A transformers ``TrainerCallback`` feeding :meth:`log` (built here: transformers loads late)."""
        from transformers import TrainerCallback

        record = self

        class _Callback(TrainerCallback):
            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                if logs and state.is_world_process_zero:
                    record.log(int(state.global_step), logs)

        return _Callback()
