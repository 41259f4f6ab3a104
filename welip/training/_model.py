"""The trainable model: a base model with LoRA, from PEFT or Unsloth, and its outputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from welip.models import resolve_model_path
from welip.training._config import _Common

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # the adapter's folder in a checkpoint, in a run's outputs and in MLflow


class BackendUnavailable(RuntimeError):
    """The configured backend cannot run where the job runs (e.g. Unsloth without a GPU)."""


def check_backend(cfg: _Common, cluster_gpus: float) -> None:
    """Refuse a backend the cluster cannot run, before any worker starts.

    Raises:
        BackendUnavailable: unsloth without GPU workers, or GPU workers on a cluster
        without GPUs.
    """
    if cfg.backend == "unsloth" and not cfg.use_gpu:
        raise BackendUnavailable(
            "backend unsloth runs on GPUs only: set use_gpu=true on a GPU cluster, or use backend peft"
        )
    if cfg.use_gpu and cluster_gpus < cfg.num_workers:
        have = "no GPU" if cluster_gpus == 0 else f"{cluster_gpus:g} GPUs"
        raise BackendUnavailable(
            f"use_gpu asks for {cfg.num_workers} GPU workers but the Ray cluster has {have}"
            + ("; unsloth needs GPUs, backend peft also runs on CPU" if cfg.backend == "unsloth" else "")
        )


def load_tokenizer(model_path: str) -> Any:
    """The base model's tokenizer, with a pad token (the EOS token if it has none).

    ``model_path`` is a local directory (:func:`welip.models.resolve_model_path`): the
    model loaders here never download from the Hugging Face Hub (``local_files_only``).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)  # nosec B615
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_lora_model(cfg: _Common, model_path: str, device: Any) -> Any:
    """The base model with fresh LoRA weights on ``device`` (float32 on CPU, bfloat16 on GPU).

    Raises:
        BackendUnavailable: unsloth asked for where it cannot run.
    """
    import torch

    if cfg.backend == "unsloth":
        if not torch.cuda.is_available():
            raise BackendUnavailable("backend unsloth needs a CUDA GPU in the training worker")
        from unsloth import FastLanguageModel  # GPU clusters install it; never imported on CPU

        model, _ = FastLanguageModel.from_pretrained(
            model_name=model_path, max_seq_length=cfg.max_seq_len, dtype=None, load_in_4bit=False
        )
        return FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            random_state=cfg.seed,
            use_gradient_checkpointing="unsloth",
        )
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(  # nosec B615 # a local directory, never the Hub
        model_path, dtype=dtype, local_files_only=True
    )
    return get_peft_model(base.to(device), lora_config(cfg))


def lora_config(cfg: _Common) -> Any:
    """PEFT's ``LoraConfig`` for a causal LM from the config's LoRA keys."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        task_type="CAUSAL_LM",
    )


def save_adapter(model: Any, tokenizer: Any, path: str | Path) -> None:
    """Write the LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``) and tokenizer."""
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))


def merge_adapter(model_source: str, adapter_path: str | Path, out_path: str | Path) -> None:
    """Write the base model with the adapter merged in: a plain HF directory vLLM loads."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = resolve_model_path(model_source)
    base = AutoModelForCausalLM.from_pretrained(  # nosec B615 # a local directory, never the Hub
        base_path, dtype=torch.float32, local_files_only=True
    )
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    merged.save_pretrained(str(out_path), safe_serialization=True)
    load_tokenizer(base_path).save_pretrained(str(out_path))


def torch_threads(cfg: _Common) -> int:
    """Intra-op threads of a CPU worker: the configured number, else the CPUs it reserved."""
    if cfg.torch_threads:
        return cfg.torch_threads
    return max(1, min(int(cfg.cpus_per_worker), os.cpu_count() or 1))
