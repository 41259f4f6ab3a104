"""Serving: vLLM engines as ``ray.serve.llm`` deployments, embedding models, and promotion behind aliases.

The engine's and the LoRA loader's names load on first use (PEP 562): they import
``ray.serve.llm``, vLLM and torch (~10 s), which ``welip`` commands, the promotion gate,
the ingestion job and the embedding replicas never need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from welip.serving._config import AutoscalingConfig, LoraServingConfig, ModelConfig
from welip.serving._embeddings import (
    Embedder,
    EmbeddingModelConfig,
    EmbeddingResult,
    EmbeddingServer,
    build_embedding_deployment,
    resolve_embedding_path,
)
from welip.serving._gate import GateRequirement, PromotionDecision, decide_promotion, record_promotion
from welip.serving._promote import (
    PromotionFailed,
    PromotionRefused,
    PromotionRequest,
    PromotionResult,
    promote_candidate,
    set_alias_ungated,
    wait_until_routed,
)

if TYPE_CHECKING:
    from welip.serving._engine import PreparedLLMServer, build_engine_deployment, build_llm_config
    from welip.serving._lora import AdapterNotFound, CatalogLoraLoader, local_adapter_dir

_ON_USE = {
    "PreparedLLMServer": "welip.serving._engine",
    "build_engine_deployment": "welip.serving._engine",
    "build_llm_config": "welip.serving._engine",
    "AdapterNotFound": "welip.serving._lora",
    "CatalogLoraLoader": "welip.serving._lora",
    "local_adapter_dir": "welip.serving._lora",
}

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


def __getattr__(name: str) -> Any:
    module = _ON_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later look-ups do not come here
    return value
