"""Serving: vLLM engines as ``ray.serve.llm`` deployments, embedding models, and promotion behind aliases."""

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
from welip.serving._gate import GateRequirement, PromotionDecision, decide_promotion, record_promotion
from welip.serving._lora import AdapterNotFound, CatalogLoraLoader, local_adapter_dir
from welip.serving._promote import (
    PromotionFailed,
    PromotionRefused,
    PromotionRequest,
    PromotionResult,
    promote_candidate,
    set_alias_ungated,
    wait_until_routed,
)

__all__ = [
    "AdapterNotFound",
    "AutoscalingConfig",
    "CatalogLoraLoader",
    "Embedder",
    "EmbeddingModelConfig",
    "EmbeddingResult",
    "EmbeddingServer",
    "GateRequirement",
    "LoraServingConfig",
    "ModelConfig",
    "PreparedLLMServer",
    "PromotionDecision",
    "PromotionFailed",
    "PromotionRefused",
    "PromotionRequest",
    "PromotionResult",
    "build_embedding_deployment",
    "build_engine_deployment",
    "build_llm_config",
    "decide_promotion",
    "local_adapter_dir",
    "promote_candidate",
    "record_promotion",
    "resolve_embedding_path",
    "set_alias_ungated",
    "wait_until_routed",
]
