"""Serve app builder: WeLIP gateway + one ``ray.serve.llm`` engine per model.

Referenced from Serve YAML and the KubeRay RayService as
``import_path: deployments.gateway:build_app``.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve
from ray.serve.deployment import Application

from welip.gateway import Gateway
from welip.serving import ModelConfig, ServingConfig, build_engine_deployment


def model_card(model: ModelConfig, created: int) -> dict[str, Any]:
    """The ``/v1/models`` entry for one model."""
    return {
        "id": model.model_id,
        "object": "model",
        "created": created,
        "owned_by": "welip",
        "root": model.source,
        "max_model_len": model.engine_kwargs.get("max_model_len"),
    }


def build_app(args: dict[str, Any]) -> Application:
    """Build the serving app from ``args`` (validated as :class:`ServingConfig`)."""
    config = ServingConfig.model_validate(args)
    created = int(time.time())
    engines = {m.model_id: build_engine_deployment(m) for m in config.models}
    gateway = serve.deployment(
        Gateway,
        name="WelipGateway",
        num_replicas=config.gateway.num_replicas,
        max_ongoing_requests=config.gateway.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.gateway.num_cpus},
    )
    return gateway.bind(
        engines=engines,
        model_cards=[model_card(m, created) for m in config.models],
        config=config.gateway,
    )
