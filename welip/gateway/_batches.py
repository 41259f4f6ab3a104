"""OpenAI's ``/v1/batches``: create, list, retrieve and cancel, per owner; one Ray Job per batch.

The route family needs ``batch``. A batch is its creator's: anyone else gets 404
``batch_not_found``. Create checks everything a line could be refused for before any
line runs: the input file (the caller's, purpose ``batch``), each line's ``url`` against
the batch's ``endpoint``, each model (served, and the caller's to use), the caller's
limits (an exhausted token budget is refused as the limiter refuses it), then records
the batch (``validating``) and submits its job (:class:`RayJobLauncher`). The job sends
the lines back through this gateway as the creator (a caller token minted here, valid
for the completion window), so every line is admitted, charged and audited as if the
creator had sent it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Query, Request

import welip
from welip.api import OpenAIError, invalid_request, load_json
from welip.batches import API_KEY_ENV, CALLER_TOKEN_ENV, BatchJobSettings
from welip.gateway._admin import _call
from welip.gateway._config import BatchesConfig, FilesConfig
from welip.gateway._file_formats import BATCH_URLS
from welip.gateway._files import file_not_found
from welip.gateway._lazy import LazyStore
from welip.store import (
    ACTIVE_BATCH_STATUSES,
    BatchRecord,
    BatchStore,
    FileRecord,
    FileStore,
    storage_url_from_env,
    utcnow,
)
from welip.trust import Principal, Trust, context_of, principal_of

logger = logging.getLogger("welip.gateway")

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
_CREATE_FIELDS = ("input_file_id", "endpoint", "completion_window", "metadata")
# Ray Job statuses after which a batch still unfinished never will be.
_JOB_ENDED = ("FAILED", "STOPPED", "SUCCEEDED")
# Ray is asked about a running batch's job at most this often (per replica): clients poll
# a batch every second or faster, and each question is an HTTP call to the dashboard.
JOB_CHECK_INTERVAL_S = 10.0
_MAX_CHECKED = 10_000
# Environment a batch job needs from the gateway's: the database and storage it shares.
_SHARED_ENV = ("WELIP_DATABASE_URL", "WELIP_S3_ENDPOINT_URL", "WELIP_S3_CA_BUNDLE")

ServesModel = Callable[[str, str], Awaitable[bool]]
"""Whether the gateway serves a model at an endpoint: ``(endpoint, model)``."""


class BatchLauncher(Protocol):
    """Starts a batch's job, and tells how the job is doing."""

    def launch(self, settings: BatchJobSettings, env: dict[str, str]) -> str:
        """Submit the job that runs ``settings.batch_id`` with ``env``; its job id."""
        ...

    def job_status(self, job_id: str) -> str | None:
        """The job's status (Ray's ``JobStatus`` name), None when it cannot be asked."""
        ...


class RayJobLauncher:
    """Submits batch jobs (``python -m welip.batches``) through Ray's Jobs API.

    The job's runtime env carries the gateway key and the creator's caller token (so they
    never appear on its command line): anyone who may read the cluster's jobs (the Ray
    dashboard, ``ray job list``) sees them, as they see every job's runtime env.
    """

    def __init__(self, config: BatchesConfig) -> None:
        self._config = config
        self._client: Any = None

    def _jobs(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            from welip._compat.ray import enable_token_auth_if_available

            enable_token_auth_if_available()
            self._client = JobSubmissionClient(self._config.ray_dashboard_url)
        return self._client

    def launch(self, settings: BatchJobSettings, env: dict[str, str]) -> str:
        python = self._config.python or sys.executable
        entrypoint = shlex.join([python, "-m", "welip.batches", "--settings", settings.model_dump_json()])
        job_id: str = self._jobs().submit_job(
            entrypoint=entrypoint,
            submission_id=f"welip-{settings.batch_id}",
            runtime_env={"env_vars": env},
            metadata={"welip_batch_id": settings.batch_id},
        )
        return job_id

    def job_status(self, job_id: str) -> str | None:
        try:
            return str(self._jobs().get_job_status(job_id).value)
        except Exception:
            logger.warning("could not ask Ray for batch job %s", job_id, exc_info=True)
            return None


def batch_not_found(batch_id: str) -> OpenAIError:
    """404 ``batch_not_found``: no such batch, or not the caller's."""
    return OpenAIError(404, f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")


def build_batches_router(
    batches: BatchStore | Callable[[], BatchStore] | None,
    files: FileStore | Callable[[], FileStore] | None,
    *,
    config: BatchesConfig,
    files_config: FilesConfig,
    trust: Trust,
    serves: ServesModel,
    launcher: BatchLauncher,
) -> APIRouter:
    """Routes under ``/v1/batches``; the trust middleware has already required ``batch``."""
    router = APIRouter(prefix="/v1/batches", tags=["batches"])
    batch_store = LazyStore(batches, BatchStore, "This gateway has no database for batches.")
    file_store = LazyStore(files, FileStore, "This gateway has no database for batches.")
    checked: dict[str, float] = {}  # batch id -> when its job was last asked about

    @router.post("", summary="Create a batch from an uploaded file of requests")
    async def create(request: Request) -> dict[str, Any]:
        principal = principal_of(request)
        spec = _create_spec(load_json(await request.body()))
        env = _job_env(trust, config, principal, COMPLETION_WINDOWS[spec["completion_window"]])
        store = await batch_store()
        active = await _call(store.count_active, principal.id)
        if active >= config.max_batches_in_flight_per_principal:
            raise OpenAIError(
                429,
                f"You have {active} unfinished batches; at most {config.max_batches_in_flight_per_principal} "
                "may run at once. Wait for one to end, or cancel one.",
                type="requests",
                code="batch_limit_reached",
            )
        fstore = await file_store()
        record = await _call(fstore.get_file, spec["input_file_id"], principal.id)
        if record is None:
            raise file_not_found(spec["input_file_id"]) from None
        if record.purpose != "batch":
            raise invalid_request(
                f"The file {record.id} has purpose `{record.purpose}`; a batch reads a file uploaded "
                "with purpose `batch`.",
                param="input_file_id",
                code="invalid_file",
            )
        total, models = await asyncio.to_thread(_read_lines, fstore, record, spec["endpoint"], config)
        for model, line in models.items():
            if not (principal.may_use(model) and await serves(spec["endpoint"], model)):
                raise invalid_request(
                    f"Line {line} of {record.id}: the model `{model}` does not exist at {spec['endpoint']} "
                    "or you do not have access to it.",
                    param="input_file_id",
                    code="model_not_found",
                )
        # One request of the caller's, and a check (not a charge) that its tokens are not exhausted:
        # the lines are charged one by one as they run.
        await trust.admit_run(context_of(request), next(iter(models)), tokens=1)
        window = COMPLETION_WINDOWS[spec["completion_window"]]
        batch = await _call(
            store.create_batch,
            owner=principal.id,
            endpoint=spec["endpoint"],
            input_file_id=record.id,
            completion_window=spec["completion_window"],
            request_total=total,
            expires_at=utcnow() + window,
            metadata=spec["metadata"],
        )
        settings = BatchJobSettings(
            batch_id=batch.id,
            gateway_url=config.gateway_url,
            concurrency=config.concurrency,
            lines_per_call=config.lines_per_call,
            max_retries=config.max_retries,
            request_timeout_s=config.request_timeout_s,
            progress_interval_s=config.progress_interval_s,
            retention_days=files_config.retention_days,
        )
        try:
            job_id = await asyncio.to_thread(launcher.launch, settings, env)
        except Exception as exc:
            logger.warning("could not submit the job of %s", batch.id, exc_info=True)
            error = {
                "code": "launch_failed",
                "message": f"The batch job could not be submitted: {exc}"[:1000],
            }
            await _call(store.move, batch.id, "failed", errors=[{**error, "param": None, "line": None}])
        else:
            await _call(store.move, batch.id, None, job_id=job_id)
        return (await _owned(store, batch.id, principal)).openai()

    @router.get("", summary="List your batches, newest first")
    async def list_batches(
        request: Request,
        limit: int = Query(20, ge=1, le=100, description="Batches per page."),
        after: str | None = Query(
            None, max_length=64, description="Id of the last batch of the previous page."
        ),
    ) -> dict[str, Any]:
        store = await batch_store()
        records, has_more = await _call(
            store.list_batches, principal_of(request).id, limit=limit, after=after
        )
        return {
            "object": "list",
            "data": [r.openai() for r in records],
            "first_id": records[0].id if records else None,
            "last_id": records[-1].id if records else None,
            "has_more": has_more,
        }

    async def current(batch_id: str, request: Request) -> BatchRecord:
        """The caller's batch, its status brought up to date when its job ended or it expired unrun."""
        store = await batch_store()
        principal = principal_of(request)
        record = await _owned(store, batch_id, principal)
        if record.status not in ACTIVE_BATCH_STATUSES:
            checked.pop(batch_id, None)
            return record
        now = time.monotonic()
        if record.status == "validating" and utcnow() >= record.expires_at:
            await _call(store.move, batch_id, "expired", when=("validating",))
        elif (
            record.job_id is not None
            and now - checked.get(batch_id, -JOB_CHECK_INTERVAL_S) >= JOB_CHECK_INTERVAL_S
        ):
            if len(checked) >= _MAX_CHECKED:
                checked.clear()
            checked[batch_id] = now
            status = await asyncio.to_thread(launcher.job_status, record.job_id)
            if status in _JOB_ENDED:
                error = {"code": "batch_job_failed", "message": f"The batch job ended ({status}) first."}
                await _call(
                    store.move,
                    batch_id,
                    "failed",
                    when=ACTIVE_BATCH_STATUSES,
                    errors=[{**error, "param": None, "line": None}],
                )
        return await _owned(store, batch_id, principal)

    @router.get("/{batch_id}", summary="Describe one of your batches")
    async def retrieve(batch_id: str, request: Request) -> dict[str, Any]:
        return (await current(batch_id, request)).openai()

    @router.post("/{batch_id}/cancel", summary="Cancel one of your batches (answered lines are kept)")
    async def cancel(batch_id: str, request: Request) -> dict[str, Any]:
        record = await current(batch_id, request)
        if record.status in ("validating", "in_progress"):
            store = await batch_store()
            await _call(store.move, batch_id, "cancelling", when=("validating", "in_progress"))
            record = await _owned(store, batch_id, principal_of(request))
        elif record.status not in ("cancelling", "cancelled"):
            raise invalid_request(
                f"The batch {batch_id} is {record.status}: only a validating or in_progress batch can be "
                "cancelled.",
                param="batch_id",
                code="batch_not_cancellable",
            )
        return record.openai()

    return router


async def _owned(store: BatchStore, batch_id: str, principal: Principal) -> BatchRecord:
    record = await _call(store.get_batch, batch_id, principal.id)
    if record is None:
        raise batch_not_found(batch_id)
    return record


def _create_spec(payload: Any) -> dict[str, Any]:
    """The create body's fields, checked; every field OpenAI has and this gateway lacks is a 400."""
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.")
    for name in payload:
        if name not in _CREATE_FIELDS:
            raise invalid_request(
                f"`{name}` is not supported by this gateway's /v1/batches (it takes "
                f"{', '.join(_CREATE_FIELDS)}).",
                param=name,
                code="unsupported_parameter",
            )
    input_file_id = payload.get("input_file_id")
    if not isinstance(input_file_id, str) or not input_file_id or len(input_file_id) > 64:
        raise invalid_request(
            "`input_file_id` is required: the id of a file uploaded with purpose `batch`.",
            param="input_file_id",
        )
    endpoint = payload.get("endpoint")
    if endpoint not in BATCH_URLS:
        raise invalid_request(
            f"`endpoint` must be one of {', '.join(BATCH_URLS)}, not {json.dumps(endpoint)}.",
            param="endpoint",
        )
    window = payload.get("completion_window")
    if window not in COMPLETION_WINDOWS:
        raise invalid_request(
            f"`completion_window` must be {' or '.join(map(json.dumps, COMPLETION_WINDOWS))}, not "
            f"{json.dumps(window)}.",
            param="completion_window",
        )
    metadata = payload.get("metadata")
    if metadata is not None:
        _check_metadata(metadata)
    return {
        "input_file_id": input_file_id,
        "endpoint": endpoint,
        "completion_window": window,
        "metadata": metadata,
    }


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_PAIRS:
        raise invalid_request(
            f"`metadata` must be an object of at most {MAX_METADATA_PAIRS} string pairs.", param="metadata"
        )
    for key, value in metadata.items():
        if (
            len(key) > MAX_METADATA_KEY_CHARS
            or not isinstance(value, str)
            or len(value) > MAX_METADATA_VALUE_CHARS
        ):
            raise invalid_request(
                f"`metadata.{key[:MAX_METADATA_KEY_CHARS]}`: keys are at most {MAX_METADATA_KEY_CHARS} "
                f"characters, values strings of at most {MAX_METADATA_VALUE_CHARS}.",
                param="metadata",
            )


def _read_lines(
    files: FileStore, record: FileRecord, endpoint: str, config: BatchesConfig
) -> tuple[int, dict[str, int]]:
    """The file's request count and its models (each with the first line naming it), checked for ``endpoint``.

    The upload checked each line's shape; what depends on the batch is checked here.
    """
    total, models = 0, dict[str, int]()
    with files.open_content(record) as source:
        for number, raw in enumerate(source, start=1):
            if not raw.strip():
                continue
            total += 1
            if total > config.max_requests_per_batch:
                raise invalid_request(
                    f"The file {record.id} holds more than {config.max_requests_per_batch} requests, "
                    "the most one batch runs.",
                    param="input_file_id",
                    code="too_many_requests",
                )
            row = json.loads(raw)
            if row["url"] != endpoint:
                raise invalid_request(
                    f"Line {number} of {record.id}: its url {row['url']} is not the batch's endpoint "
                    f"{endpoint}.",
                    param="input_file_id",
                    code="invalid_file",
                )
            if row["body"].get("stream"):
                raise invalid_request(
                    f"Line {number} of {record.id}: `stream` is not supported in a batch (answers are "
                    "written whole to the output file).",
                    param="input_file_id",
                    code="unsupported_parameter",
                )
            models.setdefault(row["body"]["model"], number)
    return total, models


def _job_env(trust: Trust, config: BatchesConfig, principal: Principal, window: timedelta) -> dict[str, str]:
    """The batch job's environment: database, storage, the gateway key and the creator's caller token.

    With auth on, a gateway that cannot make the job act as the creator refuses (501).
    """
    env = {name: os.environ[name] for name in _SHARED_ENV if os.environ.get(name)}
    env["WELIP_STORAGE_URL"] = storage_url_from_env()
    # The job imports the welip this gateway runs (one image; a checkout in development).
    source = str(Path(welip.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    if not trust.auth_enabled:
        return env
    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    token = trust.mint_caller_token(principal, window.total_seconds())
    if not key or token is None:
        raise OpenAIError(
            501,
            "Batches are not configured on this gateway: they need a service key (batches.api_key_env, "
            "a role with `delegate`) and caller tokens (auth.caller_token_secret_env).",
            type="server_error",
            code="not_configured",
        )
    env[API_KEY_ENV] = key
    env[CALLER_TOKEN_ENV] = token
    return env
