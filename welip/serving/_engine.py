"""Engine deployments: WeLIP model configs turned into ``ray.serve.llm`` objects."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment

from welip.models import resolve_model_path
from welip.observability import (
    extract_context,
    install_log_context,
    setup_tracing,
    trace_generation,
    tracing_enabled,
)
from welip.serving._config import ModelConfig
from welip.serving._lora import CatalogLoraLoader

logger = logging.getLogger(__name__)


class PreparedLLMServer(LLMServer):
    """``LLMServer`` that first resolves the model source on the replica's node.

    A packaged model is converted into the node's cache, an ``s3://`` URI copied,
    before vLLM starts; the engine then loads a plain local directory. LoRA adapters
    come from WeLIP's catalog (:class:`CatalogLoraLoader`).
    """

    async def __init__(self, llm_config: LLMConfig, **kwargs: Any) -> None:  # type: ignore[misc]
        install_log_context()
        setup_tracing("engine")
        kwargs.setdefault("model_downloader", CatalogLoraLoader)
        loading: Any = llm_config.model_loading_config
        if isinstance(loading.model_source, str):
            source = loading.model_source
            path = await asyncio.to_thread(resolve_model_path, source)
            loading.model_source = path
            # The engine config was derived (and cached) from the unresolved
            # source when the app was built; point it at the local copy.
            engine_config: Any = llm_config.get_engine_config()
            engine_config.hf_model_id = path
            logger.info("model %s: %s -> %s", llm_config.model_id, source, path)
        await super().__init__(llm_config, **kwargs)

    async def chat(self, request: Any, raw_request_info: Any = None) -> Any:
        """``LLMServer.chat``, inside an ``LLM`` span joined to the caller's trace."""
        return self._traced(await super().chat(request, raw_request_info), "chat", request, raw_request_info)

    async def completions(self, request: Any, raw_request_info: Any = None) -> Any:
        """``LLMServer.completions``, inside an ``LLM`` span joined to the caller's trace."""
        stream = await super().completions(request, raw_request_info)
        return self._traced(stream, "completions", request, raw_request_info)

    def _traced(self, stream: Any, operation: str, request: Any, raw_request_info: Any) -> Any:
        if not tracing_enabled():
            return stream
        # The gateway sends its span as a W3C traceparent header (see gateway HandleEngine).
        headers = getattr(raw_request_info, "headers", None)
        return trace_generation(
            stream, model=request.model, operation=operation, request=request, parent=extract_context(headers)
        )

    async def num_unfinished_requests(self) -> int:
        """Requests the engine still holds (waiting or generating).

        Lets callers see that an abandoned request really left the engine, and
        later lets the gateway shed load before the engine queues unboundedly.
        """
        # Ray's VLLMEngine keeps vLLM's AsyncLLM here; it has no public accessor.
        client = getattr(self.engine, "_engine_client", None)
        return int(client.get_num_unfinished_requests()) if client is not None else 0

    async def use_adapter(self, adapter_id: str) -> None:
        """Make ``adapter_id`` loadable by name in this replica's engine (no-op once loaded).

        The in-process gateway calls this; requests through a handle get the same from
        ``LLMServer``'s multiplexing.
        """
        disk = await self._load_model(adapter_id)
        engine: Any = self.engine
        await engine.resolve_lora(disk)


def build_llm_config(model: ModelConfig) -> LLMConfig:
    """Translate one :class:`ModelConfig` into a ``ray.serve.llm.LLMConfig``.

    Placement follows ``accelerator``: one CPU bundle on a CPU cluster, GPU bundles
    on a GPU cluster. vLLM options pass through untouched.
    """
    engine_kwargs = dict(model.engine_kwargs)
    env_vars = dict(model.env_vars)
    if model.accelerator == "cpu":
        bundles: list[dict[str, float]] = [{"CPU": model.cpus_per_replica}]
        if model.kv_cache_space_gib is not None:
            env_vars.setdefault("VLLM_CPU_KVCACHE_SPACE", str(model.kv_cache_space_gib))
    else:
        bundles = [{"GPU": 1, "CPU": 1} for _ in range(model.gpus_per_replica)]
    deployment_config: dict[str, Any] = {
        "max_ongoing_requests": model.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": model.replica_actor_cpus},
    }
    if model.autoscaling is not None:
        deployment_config["autoscaling_config"] = model.autoscaling.model_dump()
    else:
        deployment_config["num_replicas"] = model.num_replicas
    experimental: dict[str, Any] = {}
    if model.stream_batching_interval_ms is not None:
        experimental["stream_batching_interval_ms"] = model.stream_batching_interval_ms
    lora: dict[str, Any] | None = None
    if model.lora is not None:
        lora = {
            "max_num_adapters_per_replica": model.lora.max_adapters_per_replica,
            "download_timeout_s": model.lora.download_timeout_s,
        }
    return LLMConfig(
        model_loading_config={"model_id": model.model_id, "model_source": model.source},
        lora_config=lora,
        engine_kwargs=engine_kwargs,
        placement_group_config={"bundles": bundles, "strategy": "PACK"},
        deployment_config=deployment_config,
        runtime_env={"env_vars": env_vars} if env_vars else None,
        experimental_configs=experimental,
        server_cls=PreparedLLMServer,
    )


def build_engine_deployment(model: ModelConfig) -> Application:
    """A bound ``LLMServer`` deployment for one model, named after it."""
    llm_config = build_llm_config(model)
    return build_llm_deployment(llm_config)
