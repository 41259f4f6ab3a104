"""Serving: vLLM engines as ``ray.serve.llm`` deployments, configured by WeLIP models."""

from welip.serving._config import AutoscalingConfig, GatewayConfig, ModelConfig, ServingConfig
from welip.serving._engine import PreparedLLMServer, build_engine_deployment, build_llm_config

__all__ = [
    "AutoscalingConfig",
    "GatewayConfig",
    "ModelConfig",
    "PreparedLLMServer",
    "ServingConfig",
    "build_engine_deployment",
    "build_llm_config",
]
