"""What a batch job is told: its batch and how to drive the gateway (no secrets: those are env vars)."""

from __future__ import annotations

from pydantic import Field

from welip.config import StrictModel

API_KEY_ENV = "WELIP_BATCH_JOB_KEY"
"""The batch job's environment variable holding the gateway key its requests carry."""
CALLER_TOKEN_ENV = "WELIP_BATCH_CALLER_TOKEN"  # nosec B105 # a variable name, not a secret
"""The batch job's environment variable holding the caller token of the batch's creator."""


class BatchJobSettings(StrictModel):
    """One batch job's settings, given on its command line by the gateway that launched it."""

    batch_id: str = Field(min_length=1, max_length=64, description="The batch to run.")
    gateway_url: str = Field(min_length=1, max_length=512, description="Where every line is sent.")
    concurrency: int = Field(128, ge=1, le=4096, description="Lines in flight at once.")
    lines_per_call: int = Field(16, ge=1, le=1024, description="Lines per Ray Data batch.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries of a line answered 429 or 502-504.")
    request_timeout_s: float = Field(600, gt=0, le=86400, description="Longest wait for one answer.")
    progress_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often counts are written and a cancel or expiry looked for."
    )
    retention_days: int | None = Field(
        30, ge=1, le=3650, description="Days the output and error files are kept (null: until deleted)."
    )
