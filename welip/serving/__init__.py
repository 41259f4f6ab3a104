"""Serving: vLLM engines as ``ray.serve.llm`` deployments, configured by WeLIP models."""

from welip.serving._config import AutoscalingConfig, ModelConfig
from welip.serving._engine import PreparedLLMServer, build_engine_deployment, build_llm_config

__all__ = [
    "AutoscalingConfig",
    "ModelConfig",
    "PreparedLLMServer",
    "build_engine_deployment",
    "build_llm_config",
]
