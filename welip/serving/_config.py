"""Configuration of the serving app: which models, on which hardware, behind which gateway."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from welip.config import StrictModel

_MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


class AutoscalingConfig(StrictModel):
    """Replica autoscaling for one engine deployment (Ray Serve ``autoscaling_config``)."""

    min_replicas: int = Field(1, ge=0, le=1024, description="Replicas kept when idle.")
    max_replicas: int = Field(1, ge=1, le=1024, description="Upper bound on replicas.")
    target_ongoing_requests: float = Field(
        16, gt=0, le=4096, description="Requests per replica the autoscaler aims at."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class LoraServingConfig(StrictModel):
    """Hot-loading of registered LoRA adapters into a model's running engine.

    Adapters come from the catalog (``welip/store``: written by ``jobs/finetune.py`` and
    ``jobs/align.py``) and from storage (local or ``s3://``); vLLM's own LoRA options
    (``enable_lora``, ``max_lora_rank``, ``max_loras``) stay in ``engine_kwargs``.
    """

    max_adapters_per_replica: int = Field(
        8, ge=1, le=1024, description="Adapters a replica keeps loaded (least recently used go first)."
    )
    download_timeout_s: float = Field(
        120, gt=0, le=3600, description="Longest copy of one adapter from storage."
    )


class ModelConfig(StrictModel):
    """One model served by one ``ray.serve.llm`` engine deployment.

    The same model may appear twice under two ``model_id`` values with different
    ``engine_kwargs``; requests are routed by their ``model`` field.
    """

    model_id: str = Field(pattern=_MODEL_ID_PATTERN, description="Name clients send as `model`.")
    source: str = Field(
        min_length=1,
        description=(
            "Packaged model name (see `welip models list`), local HF-format directory, "
            "or s3:// URI. Resolved on the replica's node, converted once into the cache."
        ),
    )
    accelerator: Literal["cpu", "gpu"] = Field(
        "cpu", description="Where the engine runs; decides the placement bundles."
    )
    gpus_per_replica: int = Field(
        1,
        ge=1,
        le=64,
        description="GPUs per replica when accelerator is gpu (set tensor_parallel_size to match).",
    )
    cpus_per_replica: float = Field(
        1.0, gt=0, le=256, description="CPUs reserved for the engine's placement bundle."
    )
    replica_actor_cpus: float = Field(
        0.1,
        ge=0,
        le=64,
        description=(
            "CPUs reserved for the replica actor itself, on top of the engine bundle; "
            "small so an engine and the gateway fit on a 2-core laptop."
        ),
    )
    kv_cache_space_gib: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU engines only: KV cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE).",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments, passed through unchanged (e.g. max_model_len).",
    )
    num_replicas: int = Field(1, ge=1, le=1024, description="Fixed replicas when autoscaling is unset.")
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Autoscale replicas instead of a fixed count."
    )
    max_ongoing_requests: int = Field(
        256, ge=1, le=65536, description="Concurrent requests one replica accepts."
    )
    stream_batching_interval_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="How long the engine replica gathers streamed tokens into one message.",
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Extra environment for the engine replica."
    )
    lora: LoraServingConfig | None = Field(
        None, description="Serve registered LoRA adapters of this model (needs engine_kwargs.enable_lora)."
    )

    @model_validator(mode="after")
    def _cpu_only_options(self) -> ModelConfig:
        if self.accelerator == "gpu" and self.kv_cache_space_gib is not None:
            raise ValueError("kv_cache_space_gib applies to CPU engines only")
        if self.lora is not None and not self.engine_kwargs.get("enable_lora"):
            raise ValueError(
                f"model {self.model_id}: `lora` needs vLLM's LoRA support on: set engine_kwargs.enable_lora "
                "to true (and max_lora_rank to at least the adapters' rank)"
            )
        return self
