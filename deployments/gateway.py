"""Serve app builder: the WeLIP gateway, a ``ray.serve.llm`` engine per model, an embedding deployment each.

Referenced from Serve YAML and the KubeRay RayService as
``import_path: deployments.gateway:build_app``.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.llm import build_llm_deployment

from welip.gateway import EngineGateway, Gateway, ModelCard, ServingConfig
from welip.serving import (
    EmbeddingModelConfig,
    ModelConfig,
    build_embedding_deployment,
    build_engine_deployment,
    build_llm_config,
)


def model_card(model: ModelConfig, created: int) -> ModelCard:
    """The ``/v1/models`` entry for one model."""
    return ModelCard(
        id=model.model_id,
        created=created,
        root=model.model_id,  # clients see no storage location
        source=model.source,
        max_model_len=model.engine_kwargs.get("max_model_len"),
    )


def embedding_card(model: EmbeddingModelConfig, created: int) -> ModelCard:
    """The ``/v1/models`` entry for one embedding model."""
    return ModelCard(
        id=model.model_id,
        created=created,
        root=model.model_id,
        source=model.source,
        max_inputs_per_request=model.max_inputs_per_request,
    )


def build_app(args: dict[str, Any]) -> Application:
    """Build the serving app from ``args`` (validated as :class:`ServingConfig`)."""
    config = ServingConfig.model_validate(args)
    created = int(time.time())
    cards = [model_card(m, created) for m in config.models]
    lora_models = [m.model_id for m in config.models if m.lora is not None]
    no_prompt_logprobs = [m.model_id for m in config.models if m.lora is not None and m.accelerator == "cpu"]
    embedding_cards = [embedding_card(e, created) for e in config.embeddings]
    embedders = {e.model_id: build_embedding_deployment(e) for e in config.embeddings}
    if config.gateway.placement == "standalone":
        gateway = serve.deployment(
            name="WelipGateway",
            num_replicas=config.gateway.num_replicas,
            max_ongoing_requests=config.gateway.max_ongoing_requests,
            ray_actor_options={"num_cpus": config.gateway.num_cpus},
        )(Gateway)
        engines = {m.model_id: build_engine_deployment(m) for m in config.models}
        return gateway.bind(
            engines=engines,
            model_cards=cards,
            config=config.gateway,
            lora_models=lora_models,
            no_prompt_logprobs=no_prompt_logprobs,
            embedders=embedders,
            embedding_cards=embedding_cards,
        )
    first, *rest = config.models
    return build_llm_deployment(
        build_llm_config(first),
        deployment_cls=EngineGateway,
        bind_kwargs={
            "peers": {m.model_id: build_engine_deployment(m) for m in rest},
            "model_cards": cards,
            "gateway_config": config.gateway,
            "lora_models": lora_models,
            "no_prompt_logprobs": no_prompt_logprobs,
            "embedders": embedders,
            "embedding_cards": embedding_cards,
        },
    )
