"""A batch job: read the input file, send its lines through the gateway over Ray Data, store the answers.

Status, as OpenAI's: ``validating`` (created; the job not yet running) → ``in_progress``
→ ``finalizing`` (the output and error files being stored) → ``completed``; or
``cancelling`` → ``cancelled`` (what was answered is kept), ``expired`` (past
``expires_at``: what was answered is kept, the rest is in the error file as
``batch_expired``), ``failed`` (the job could not run). ``request_counts`` are written
every ``progress_interval_s`` while results arrive, and a cancel or expiry is looked for
then: the job stops sending at once (requests in flight are abandoned, which aborts them
in the engine).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import IO, Any, BinaryIO, cast

from welip.batches._lines import LineSender, output_line, unsent_line
from welip.batches._settings import BatchJobSettings
from welip.store import ACTIVE_BATCH_STATUSES, BatchRecord, BatchStore, FileStore, utcnow

logger = logging.getLogger("welip.batches")

Execute = Callable[[list[dict[str, str]], BatchJobSettings], Iterator[dict[str, Any]]]
"""Runs input lines (rows ``{"line": json}``), yielding a result per line as they come."""


class BatchNotFound(LookupError):
    """The batch the job was given does not exist."""


def ray_data_execute(rows: list[dict[str, str]], settings: BatchJobSettings) -> Iterator[dict[str, Any]]:
    """Send the lines from a Ray Data actor: ``concurrency`` in flight, in calls of ``lines_per_call``."""
    import ray.data  # only the job needs Ray Data

    calls = max(1, math.ceil(settings.concurrency / settings.lines_per_call))
    ds: Any = ray.data.from_items(
        rows, override_num_blocks=max(1, math.ceil(len(rows) / settings.lines_per_call))
    )
    ds = ds.map_batches(
        LineSender,
        fn_constructor_kwargs={"settings": settings},
        batch_size=settings.lines_per_call,
        compute=ray.data.ActorPoolStrategy(
            size=1, max_tasks_in_flight_per_actor=calls, max_concurrent_calls_per_actor=calls
        ),
        num_cpus=0.25,
    )
    for row in ds.iter_rows():
        yield json.loads(row["result"])


def run_batch(
    settings: BatchJobSettings,
    *,
    batches: BatchStore,
    files: FileStore,
    execute: Execute = ray_data_execute,
) -> dict[str, Any]:
    """Run one batch to its end status; a summary (status, counts, file ids).

    Raises:
        BatchNotFound: no such batch.
    """
    batch_id = settings.batch_id
    batch = batches.get_batch(batch_id, None)
    if batch is None:
        raise BatchNotFound(f"no batch {batch_id}")
    if not batches.move(batch_id, "in_progress", when=("validating",)):
        # Cancelled before the job started, or run already: end a pending cancel, touch nothing else.
        batches.move(batch_id, "cancelled", when=("cancelling",))
        return _summary(batches, batch_id)
    try:
        return _run(settings, batch, batches, files, execute)
    except Exception as exc:
        logger.exception("batch %s failed", batch_id)
        error = {"code": "batch_job_failed", "message": f"{type(exc).__name__}: {exc}"[:1000], "param": None}
        batches.move(batch_id, "failed", when=ACTIVE_BATCH_STATUSES, errors=[{**error, "line": None}])
        raise


def _run(
    settings: BatchJobSettings, batch: BatchRecord, batches: BatchStore, files: FileStore, execute: Execute
) -> dict[str, Any]:
    record = files.get_file(batch.input_file_id, batch.owner)
    if record is None:
        raise FileNotFoundError(f"the input file {batch.input_file_id} is gone")
    with files.open_content(record) as source:
        rows = [{"line": raw.decode("utf-8")} for raw in source if raw.strip()]
    custom_ids = [json.loads(r["line"])["custom_id"] for r in rows]
    outcome, answered, completed, failed = "completed", set(), 0, 0
    with tempfile.TemporaryFile("w+b") as output, tempfile.TemporaryFile("w+b") as errors:
        results = execute(rows, settings)
        checked = time.monotonic()
        try:
            for result in results:
                ok = result["status_code"] == 200
                _write(output if ok else errors, output_line(result))
                answered.add(result["custom_id"])
                completed, failed = completed + ok, failed + (not ok)
                if time.monotonic() - checked >= settings.progress_interval_s:
                    checked = time.monotonic()
                    batches.move(batch.id, None, request_completed=completed, request_failed=failed)
                    outcome = _interrupted(batches, batch) or outcome
                    if outcome != "completed":
                        break
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # stops Ray Data's executor: nothing more is sent
        if outcome == "expired":
            for custom_id in custom_ids:
                if custom_id not in answered:
                    _write(errors, unsent_line(custom_id, "batch_expired", "The batch expired first."))
                    failed += 1
        counts = {"request_completed": completed, "request_failed": failed}
        if outcome == "completed":
            batches.move(batch.id, "finalizing", when=("in_progress", "cancelling"), **counts)
        file_ids = {
            "output_file_id": _store(files, batch, output, "output", settings),
            "error_file_id": _store(files, batch, errors, "error", settings),
        }
    batches.move(batch.id, outcome, when=ACTIVE_BATCH_STATUSES, **counts, **file_ids)
    return _summary(batches, batch.id)


def _interrupted(batches: BatchStore, batch: BatchRecord) -> str | None:
    """``cancelled`` when a cancel was asked, ``expired`` past ``expires_at``, else None."""
    now = batches.get_batch(batch.id, None) or batch
    if now.status == "cancelling":
        return "cancelled"
    if utcnow() >= now.expires_at:
        return "expired"
    return None


def _write(out: IO[bytes], line: dict[str, Any]) -> None:
    out.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")


def _store(
    files: FileStore, batch: BatchRecord, content: IO[bytes], kind: str, settings: BatchJobSettings
) -> str | None:
    """Store an output or error file (purpose ``batch_output``) for the batch's owner; None if empty."""
    if not content.tell():
        return None
    content.seek(0)
    days = settings.retention_days
    record = files.create_file(
        owner=batch.owner,
        purpose="batch_output",
        filename=f"{batch.id}_{kind}.jsonl",
        content=cast(BinaryIO, content),
        expires_at=utcnow() + timedelta(days=days) if days else None,
    )
    return record.id


def _summary(batches: BatchStore, batch_id: str) -> dict[str, Any]:
    record = batches.get_batch(batch_id, None)
    assert record is not None  # nosec B101 # batches are never deleted
    view = record.openai()
    return {k: view[k] for k in ("id", "status", "request_counts", "output_file_id", "error_file_id")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The job's entrypoint: ``--settings JSON`` (a :class:`BatchJobSettings`); prints the summary."""
    from welip.cluster import connect_ray
    from welip.observability import configure_job_logging
    from welip.store import Database, storage_url_from_env

    configure_job_logging()
    parser = argparse.ArgumentParser(description="Run one /v1/batches batch (the gateway submits this job).")
    parser.add_argument("--settings", required=True, help="The job's settings, as JSON.")
    settings = BatchJobSettings.model_validate_json(parser.parse_args(argv).settings)
    connect_ray()
    database = Database()
    try:
        summary = run_batch(
            settings, batches=BatchStore(database), files=FileStore(database, storage_url_from_env())
        )
    finally:
        database.dispose()
    print(json.dumps(summary))
    return summary
