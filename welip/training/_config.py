"""Fine-tuning and alignment configuration: flat YAML, as LLaMA-Factory's.

``configs/finetune/<model>_<variant>.yaml`` and ``configs/align/<model>_<variant>.yaml``
hold one mapping each, read by :func:`welip.config.load_config`; ``key=value`` overrides
on the command line change single keys. No top-level key has a dot: a dotted override
reaches into a mapping (``verl.trainer.nnodes=2`` sets ``{"trainer": {"nnodes": 2}}`` in
``verl``, which VeRL's config merges). Everything here is inert: no file is read, no
model loaded while a config validates.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from welip.config import StrictModel
from welip.evaluation import METRICS

_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class _Common(StrictModel):
    """What supervised fine-tuning and RL alignment share: model, LoRA, workers, outputs."""

    name: str = Field(
        pattern=_NAME_PATTERN,
        description="Adapter name: the registered model in MLflow and, with `-v<version>`, the "
        "model id clients send to the gateway.",
    )
    model: str = Field(
        min_length=1,
        description="Base model: packaged model name, local HF-format directory or s3:// URI.",
    )
    base_model_id: str = Field(
        min_length=1,
        max_length=128,
        description="The serving model id of the base model; the adapter is hot-loaded into its engine.",
    )
    dataset: str = Field(min_length=1, description="jsonl, csv or parquet file: local path or s3:// URI.")
    backend: Literal["peft", "unsloth"] = Field(
        "peft", description="peft: transformers + PEFT, CPU or GPU. unsloth: GPU only, never a fallback."
    )
    lora_rank: int = Field(16, ge=1, le=512, description="LoRA rank r.")
    lora_alpha: int = Field(32, ge=1, le=4096, description="LoRA alpha (scale = alpha / rank).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        max_length=32,
        description="Module names LoRA wraps (vLLM serves adapters on attention and MLP projections).",
    )
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, le=100_000, description="Linear warm-up steps.")
    max_grad_norm: float = Field(1.0, gt=0, le=1000, description="Gradient clipping norm.")
    max_seq_len: int = Field(
        512, ge=16, le=131072, description="Longest tokenized example; longer ones are cut."
    )
    seed: int = Field(0, ge=0, description="Seeds shuffling, LoRA init and dropout.")
    num_workers: int = Field(1, ge=1, le=1024, description="Ray Train workers (data parallel).")
    use_gpu: bool = Field(False, description="GPU workers with NCCL; CPU workers use gloo.")
    cpus_per_worker: float = Field(1.0, gt=0, le=256, description="CPUs reserved per worker.")
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="CPU workers: intra-op threads (default: the CPUs reserved, at least 1).",
    )
    checkpoint_every_steps: int = Field(
        20, ge=1, le=1_000_000, description="Optimizer steps between checkpoints (and at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, le=100, description="Checkpoints kept in storage.")
    max_failures: int = Field(
        2,
        ge=0,
        le=100,
        description="Worker failures the run survives; each restart resumes from the last checkpoint.",
    )
    log_every_steps: int = Field(
        1, ge=1, le=10_000, description="Steps between loss lines and MLflow points."
    )
    storage_url: str | None = Field(
        None, description="Where checkpoints and outputs go (default: $WELIP_STORAGE_URL/finetune)."
    )
    merge: bool = Field(False, description="Also write the base model with the adapter merged in.")
    register_model: bool = Field(
        True, description="Register the adapter in MLflow and the WeLIP catalog, so serving can load it."
    )
    experiment: str = Field("welip-finetune", min_length=1, max_length=256, description="MLflow experiment.")
    mlflow: bool = Field(True, description="Track the run in MLflow (MLFLOW_TRACKING_URI).")

    @model_validator(mode="after")
    def _targets(self) -> _Common:
        for target in self.lora_targets:
            if not re.fullmatch(r"[A-Za-z0-9_.]{1,64}", target):
                raise ValueError(f"lora_targets entry {target!r} is not a module name")
        return self


class FinetuneConfig(_Common):
    """Supervised LoRA fine-tuning (``jobs/finetune.py``).

    Data: chat rows ``{"messages": [{"role", "content"}, ...]}`` or alpaca rows
    ``{"instruction", "input", "output", "system"?}``; the loss covers assistant tokens
    only.
    """

    dataset_format: Literal["auto", "messages", "alpaca"] = Field(
        "auto", description="Row shape; auto: `messages` if the row has it, else alpaca."
    )
    epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the data (fractions allowed).")
    max_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(4, ge=1, le=4096, description="Examples per worker per micro-batch.")
    grad_accum_steps: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")


class AlignConfig(_Common):
    """GRPO alignment (``jobs/align.py``) with a reward made of an evaluation metric.

    Rows are VeRL-shaped: ``prompt`` (chat messages or a string), ``data_source`` and the
    answer in ``reward_model.ground_truth`` (or a top-level ``ground_truth``).
    """

    rl_backend: Literal["trl", "verl"] = Field(
        "trl",
        description="trl: TRL's GRPOTrainer inside a Ray Train worker (small models, CPU). "
        "verl: VeRL's Ray PPO trainer with vLLM rollouts (GPU clusters).",
    )
    reward_metric: str = Field("numeric_match", description="An evaluation metric used as the reward.")
    reward_kwargs: dict[str, Any] = Field(default_factory=dict, description="Options of the metric.")
    num_generations: int = Field(4, ge=2, le=256, description="Completions per prompt (the GRPO group).")
    max_prompt_len: int = Field(256, ge=8, le=65536, description="Prompt tokens kept.")
    max_completion_len: int = Field(64, ge=1, le=65536, description="Tokens generated per completion.")
    temperature: float = Field(1.0, gt=0, le=2, description="Sampling temperature of rollouts.")
    beta: float = Field(0.0, ge=0, le=10, description="KL penalty coefficient (0: no reference model).")
    batch_size: int = Field(4, ge=1, le=65536, description="Prompts per step per worker.")
    max_steps: int = Field(10, ge=1, le=1_000_000, description="Optimizer steps.")
    learning_rate: float = Field(1e-5, gt=0, le=1, description="Peak learning rate.")
    verl: dict[str, Any] = Field(
        default_factory=dict,
        description="verl backend: VeRL trainer keys passed through (dotted, e.g. "
        "`actor_rollout_ref.rollout.tensor_model_parallel_size`), over WeLIP's translation.",
    )

    @model_validator(mode="after")
    def _reward(self) -> AlignConfig:
        metric = METRICS.get(self.reward_metric)
        if metric is None:
            raise ValueError(
                f"unknown reward_metric {self.reward_metric!r}; known: {', '.join(sorted(METRICS))}"
            )
        if self.reward_metric == "acc":
            raise ValueError("acc scores multiple-choice logprobs, not an answer: pick another reward_metric")
        unknown = set(self.reward_kwargs) - set(metric.options)
        if unknown:
            raise ValueError(f"metric {self.reward_metric!r} has no option {', '.join(sorted(unknown))}")
        if self.rl_backend == "verl" and self.backend == "unsloth":
            raise ValueError("the verl backend trains with its own FSDP workers; backend must be peft")
        if self.verl and self.rl_backend != "verl":
            raise ValueError("`verl` options apply to rl_backend verl only")
        return self
