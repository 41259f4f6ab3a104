"""Configuration of the gateway ingress: where it runs, its timeouts, and the models behind it.

The trust layer's settings (``auth``, ``limits``, ``cache``, ``audit``, ``guardrails``)
are :class:`welip.trust.TrustConfig`'s, which :class:`GatewayConfig` extends: a
gateway's YAML has them at its top level.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from welip.config import StrictModel
from welip.serving import EmbeddingModelConfig, ModelConfig
from welip.trust import TrustConfig


class FilesConfig(StrictModel):
    """Bounds of ``/v1/files``: upload size, stored bytes per principal, retention.

    Content lives in WeLIP's artifact storage (``WELIP_STORAGE_URL``), metadata in the
    database (``WELIP_DATABASE_URL``).
    """

    max_file_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1024,
        le=64 * 1024**3,
        description=(
            "Largest file one upload may carry (default 100 MiB). The upload is streamed (to a "
            "temporary file, not memory) and refused with 413 `request_too_large` as soon as it "
            "passes this; uploads are bounded by this, not by `limits.max_body_bytes`."
        ),
    )
    max_stored_bytes_per_principal: int = Field(
        10 * 1024**3,
        ge=1024,
        le=1024**5,
        description=(
            "Bytes of unexpired files one principal may keep (default 10 GiB). An upload that "
            "would pass it is refused with 400 `storage_quota_exceeded` (not 429: waiting does "
            "not help, deleting files does)."
        ),
    )
    retention_days: int | None = Field(
        30,
        ge=1,
        le=3650,
        description=(
            "Days a file is kept (its `expires_at`); an expired file is 404 at once, and its row "
            "and content are deleted the next time its owner uploads or lists files. null: kept until "
            "deleted."
        ),
    )


class BatchesConfig(StrictModel):
    """``/v1/batches``: where each batch's Ray Job runs and how hard it drives the gateway.

    The gateway submits one Ray Job per batch through Ray's Jobs API; the job sends every
    line back through this gateway over HTTP (auth, limits, guardrails and audit apply per
    line) as the batch's creator, with the service key in ``api_key_env`` (a role holding
    ``delegate``) and a caller token minted at create for the creator.
    """

    enabled: bool = Field(True, description="Serve /v1/batches (off: the routes answer 404).")
    ray_dashboard_url: str = Field(
        "http://127.0.0.1:8265",
        min_length=1,
        max_length=512,
        description="Ray's dashboard (Jobs API) that batch jobs are submitted to.",
    )
    gateway_url: str = Field(
        "http://127.0.0.1:8000",
        min_length=1,
        max_length=512,
        description="Where a batch job reaches this gateway (its requests go through it, line by line).",
    )
    api_key_env: str | None = Field(
        "WELIP_BATCH_API_KEY",
        max_length=128,
        description=(
            "Environment variable (of the gateway) holding the key batch jobs call the gateway with; "
            "its role must hold `delegate`. Needed when auth is on."
        ),
    )
    python: str | None = Field(
        None,
        max_length=512,
        description="Interpreter of batch jobs (default: the gateway's own, as in one image).",
    )
    concurrency: int = Field(
        128, ge=1, le=4096, description="Requests one batch keeps in flight at the gateway."
    )
    lines_per_call: int = Field(
        16,
        ge=1,
        le=1024,
        description="Lines per Ray Data batch; progress and cancels are seen between them.",
    )
    max_requests_per_batch: int = Field(
        50_000, ge=1, le=1_000_000, description="Most lines one input file may hold (OpenAI's limit)."
    )
    max_batches_in_flight_per_principal: int = Field(
        4, ge=1, le=1000, description="Unfinished batches one principal may have; more are refused (429)."
    )
    max_retries: int = Field(
        5,
        ge=0,
        le=50,
        description="Retries of a line answered 429 or 502-504 (or not at all), honoring Retry-After.",
    )
    request_timeout_s: float = Field(600, gt=0, le=86400, description="Longest wait for one line's answer.")
    progress_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often a batch job writes request_counts and looks for a cancel or expiry.",
    )


class GatewayConfig(TrustConfig):
    """The WeLIP gateway ingress: the trust layer's settings plus placement, replicas and timeouts."""

    placement: Literal["in_engine", "standalone"] = Field(
        "in_engine",
        description=(
            "in_engine: the gateway runs inside the first model's engine replicas and calls "
            "that engine in-process (fewest hops; scales with that model). standalone: its "
            "own deployment over handles to every engine, scaled by num_replicas."
        ),
    )
    num_replicas: int = Field(1, ge=1, le=1024, description="Standalone gateway replicas.")
    num_cpus: float = Field(
        0.1, ge=0, le=64, description="CPUs reserved per standalone gateway replica (fractional is fine)."
    )
    max_ongoing_requests: int = Field(
        1024, ge=1, le=65536, description="Concurrent requests one gateway replica accepts."
    )
    first_response_timeout_s: float = Field(
        600,
        gt=0,
        le=86400,
        description="Longest wait for an engine's first answer (a whole non-streamed response).",
    )
    ready_timeout_s: float = Field(
        10, gt=0, le=600, description="How long /ready waits for each engine's health check."
    )
    files: FilesConfig = Field(default_factory=FilesConfig, description="Bounds of /v1/files.")
    batches: BatchesConfig = Field(default_factory=BatchesConfig, description="/v1/batches and its jobs.")
    catalog_refresh_s: float = Field(
        2,
        gt=0,
        le=3600,
        description="How often a replica rereads registered adapters and aliases; an alias switch "
        "reaches every replica within this time.",
    )


class ServingConfig(StrictModel):
    """Arguments of ``deployments.gateway:build_app`` (the Serve app's ``args``)."""

    models: list[ModelConfig] = Field(min_length=1, max_length=64, description="Engines to serve.")
    embeddings: list[EmbeddingModelConfig] = Field(
        default_factory=list, max_length=64, description="Embedding models, served at POST /v1/embeddings."
    )
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="Ingress settings.")

    @model_validator(mode="after")
    def _unique_ids(self) -> ServingConfig:
        ids = [m.model_id for m in self.models] + [e.model_id for e in self.embeddings]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate model_id (across models and embeddings): {', '.join(duplicates)}")
        return self
