"""Fine-tuning and RL alignment on Ray Train, registered for serving.

:func:`finetune` (LoRA SFT, ``jobs/finetune.py``) and :func:`align` (GRPO,
``jobs/align.py``) each run one job start to end over the same pipeline: check the
backend, read the data, open one MLflow run, train, then the adapter to storage (merged
on request), MLflow and the WeLIP catalog the gateway loads from. The pieces are here
too: configs, data rendering with assistant-only labels, the per-worker loops, rewards
and registration.
"""

from welip.training._align import align, check_align_backend
from welip.training._align_data import (
    AlignData,
    Prompt,
    load_align_data,
    trl_rows,
    verl_rows,
    write_parquet,
)
from welip.training._config import AlignConfig, FinetuneConfig
from welip.training._data import (
    IGNORE_INDEX,
    Example,
    TrainingData,
    load_training_data,
    to_messages,
    tokenize_chat,
)
from welip.training._finetune import finetune
from welip.training._model import (
    BackendUnavailable,
    check_backend,
    load_lora_model,
    load_tokenizer,
    merge_adapter,
)
from welip.training._registry import (
    MlflowRun,
    git_commit,
    lineage,
    register_adapter,
    start_mlflow_run,
)
from welip.training._rewards import compute_score, reward_function
from welip.training._sft import micro_batch_indices, total_steps
from welip.training._verl import run_verl, verl_config

__all__ = [
    "IGNORE_INDEX",
    "AlignConfig",
    "AlignData",
    "BackendUnavailable",
    "Example",
    "FinetuneConfig",
    "MlflowRun",
    "Prompt",
    "TrainingData",
    "align",
    "check_align_backend",
    "check_backend",
    "compute_score",
    "finetune",
    "git_commit",
    "lineage",
    "load_align_data",
    "load_lora_model",
    "load_tokenizer",
    "load_training_data",
    "merge_adapter",
    "micro_batch_indices",
    "register_adapter",
    "reward_function",
    "run_verl",
    "start_mlflow_run",
    "to_messages",
    "tokenize_chat",
    "total_steps",
    "trl_rows",
    "verl_config",
    "verl_rows",
    "write_parquet",
]
