"""Serving: vLLM engines as ``ray.serve.llm`` deployments, and embedding models, configured by WeLIP."""

from welip.serving._config import AutoscalingConfig, LoraServingConfig, ModelConfig
from welip.serving._embeddings import (
    Embedder,
    EmbeddingModelConfig,
    EmbeddingResult,
    EmbeddingServer,
    build_embedding_deployment,
    resolve_embedding_path,
)
from welip.serving._engine import PreparedLLMServer, build_engine_deployment, build_llm_config
from welip.serving._lora import AdapterNotFound, CatalogLoraLoader, local_adapter_dir
from welip.serving._promote import (
    Decision,
    PromotionFailed,
    PromotionRefused,
    PromotionRequest,
    PromotionResult,
    Requirement,
    decide,
    promote_candidate,
    record,
    set_alias_ungated,
    wait_until_routed,
)

__all__ = [
    "AdapterNotFound",
    "AutoscalingConfig",
    "CatalogLoraLoader",
    "Decision",
    "Embedder",
    "EmbeddingModelConfig",
    "EmbeddingResult",
    "EmbeddingServer",
    "LoraServingConfig",
    "ModelConfig",
    "PreparedLLMServer",
    "PromotionFailed",
    "PromotionRefused",
    "PromotionRequest",
    "PromotionResult",
    "Requirement",
    "build_embedding_deployment",
    "build_engine_deployment",
    "build_llm_config",
    "decide",
    "local_adapter_dir",
    "promote_candidate",
    "record",
    "resolve_embedding_path",
    "set_alias_ungated",
    "wait_until_routed",
]
