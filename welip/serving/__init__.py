"""Serving: vLLM engines as ``ray.serve.llm`` deployments, configured by WeLIP models."""

from welip.serving._config import AutoscalingConfig, LoraServingConfig, ModelConfig
from welip.serving._engine import PreparedLLMServer, build_engine_deployment, build_llm_config
from welip.serving._lora import AdapterNotFound, CatalogLoraLoader, local_adapter_dir
from welip.serving._promote import Decision, Requirement, decide, record

__all__ = [
    "AdapterNotFound",
    "AutoscalingConfig",
    "CatalogLoraLoader",
    "Decision",
    "LoraServingConfig",
    "ModelConfig",
    "PreparedLLMServer",
    "Requirement",
    "build_engine_deployment",
    "build_llm_config",
    "decide",
    "local_adapter_dir",
    "record",
]
