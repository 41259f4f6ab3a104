"""OpenAI's ``/v1/files``: upload, list, retrieve, content and delete, per owner.

The route family admits a caller holding any of ``batch``, ``finetune_submit`` or
``eval_submit``; each purpose then needs its own (``batch``, ``fine-tune``, ``evals``).
Batches store their output and error files as their creator's, with purpose
``batch_output``: read like any other file, never uploaded. A file is its uploader's:
anyone else gets 404 ``file_not_found``, as for a file that does not exist. Uploads are
bounded by :class:`FilesConfig`, not by the JSON body limit, and checked line by line
before they are stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import FormData, UploadFile

from welip.api import OpenAIError, invalid_request
from welip.gateway._admin import _call
from welip.gateway._config import FilesConfig
from welip.gateway._file_formats import PURPOSES, check_jsonl, invalid_file
from welip.gateway._lazy import LazyStore
from welip.store import FileRecord, FileStore
from welip.trust import Principal, body_too_large, permission_denied, principal_of

PURPOSE_PERMISSIONS = {"batch": "batch", "fine-tune": "finetune_submit", "evals": "eval_submit"}
"""The permission each purpose needs; the route family admits any of them."""

# OpenAI's other purposes: named in the refusal so the caller knows they are known, not typos.
_OPENAI_ONLY_PURPOSES = ("assistants", "vision", "user_data")
MAX_FILENAME_CHARS = 255
_MULTIPART_FIELDS_BYTES = 64 * 1024  # the purpose field and part headers, on top of the file
_CHUNK_BYTES = 1024 * 1024


def upload_body_limit(config: FilesConfig) -> int:
    """The body bound of ``POST /v1/files``: the largest file plus room for the multipart framing."""
    return config.max_file_bytes + _MULTIPART_FIELDS_BYTES


def file_not_found(file_id: str) -> OpenAIError:
    """404 ``file_not_found``: no such file, or not the caller's."""
    return OpenAIError(404, f"No such File object: {file_id}", param="file_id", code="file_not_found")


def build_files_router(files: FileStore | Callable[[], FileStore] | None, config: FilesConfig) -> APIRouter:
    """Routes under ``/v1/files``; the trust middleware has already admitted the route family.

    ``files`` is the store, or a function that opens it (its database and migrations),
    called once, off the event loop, on the first ``/v1/files`` request: a gateway whose
    trust layer needs no database then starts without one.
    """
    router = APIRouter(prefix="/v1/files", tags=["files"])
    store = LazyStore(files, FileStore, "This gateway has no file store (no database).")

    @router.post("", summary="Upload a JSON Lines file (batch, fine-tune or evals)", openapi_extra=_UPLOAD)
    async def upload(request: Request) -> dict[str, Any]:
        principal = principal_of(request)
        file_store = await store()
        try:
            form = await request.form(max_files=1, max_fields=4, max_part_size=_MULTIPART_FIELDS_BYTES)
        except Exception as exc:  # starlette's 400 for a malformed body, in OpenAI's shape
            if isinstance(exc, OpenAIError):
                raise
            raise invalid_request(f"The body is not valid multipart/form-data: {_detail(exc)}") from None
        try:
            purpose, upload_file = _fields(form, principal)
            size = upload_file.size or 0
            if size > config.max_file_bytes:
                raise body_too_large(config.max_file_bytes)
            filename = upload_file.filename or "file"
            if len(filename) > MAX_FILENAME_CHARS:
                raise invalid_file(
                    f"The filename has {len(filename)} characters; at most {MAX_FILENAME_CHARS}."
                )
            await _call(file_store.purge_expired, principal.id)
            stored = await _call(file_store.stored_bytes, principal.id)
            cap = config.max_stored_bytes_per_principal
            if stored + size > cap:
                raise OpenAIError(
                    400,
                    f"Storing this file ({size} bytes) would pass your quota of {cap} bytes: you store "
                    f"{stored} bytes already. Delete files you no longer need.",
                    param="file",
                    code="storage_quota_exceeded",
                )
            await asyncio.to_thread(_check, upload_file.file, purpose)
            expires_at = (
                datetime.now(UTC) + timedelta(days=config.retention_days) if config.retention_days else None
            )
            upload_file.file.seek(0)
            record = await _call(
                file_store.create_file,
                owner=principal.id,
                purpose=purpose,
                filename=filename,
                content=upload_file.file,
                expires_at=expires_at,
            )
        finally:
            await form.close()
        return record.openai()

    @router.get("", summary="List your files")
    async def list_files(
        request: Request,
        purpose: str | None = Query(None, max_length=32, description="Only files of this purpose."),
        limit: int = Query(10_000, ge=1, le=10_000, description="Files per page."),
        after: str | None = Query(
            None, max_length=64, description="Id of the last file of the previous page."
        ),
        order: Literal["asc", "desc"] = Query("desc", description="By creation time."),
    ) -> dict[str, Any]:
        owner = principal_of(request).id
        file_store = await store()
        await _call(file_store.purge_expired, owner)
        records, has_more = await _call(
            file_store.list_files, owner, purpose=purpose, limit=limit, after=after, order=order
        )
        return {
            "object": "list",
            "data": [r.openai() for r in records],
            "first_id": records[0].id if records else None,
            "last_id": records[-1].id if records else None,
            "has_more": has_more,
        }

    async def owned(file_id: str, request: Request) -> FileRecord:
        record = await _call((await store()).get_file, file_id, principal_of(request).id)
        if record is None:
            raise file_not_found(file_id)
        return record

    @router.get("/{file_id}", summary="Describe one of your files")
    async def retrieve(file_id: str, request: Request) -> dict[str, Any]:
        return (await owned(file_id, request)).openai()

    @router.get("/{file_id}/content", summary="The content of one of your files")
    async def content(file_id: str, request: Request) -> StreamingResponse:
        record = await owned(file_id, request)
        try:
            source = await asyncio.to_thread((await store()).open_content, record)
        except FileNotFoundError:
            raise OpenAIError(
                500,
                f"The content of {file_id} is missing from storage.",
                type="server_error",
                code="file_content_missing",
            ) from None
        return StreamingResponse(_chunks(source), media_type="application/octet-stream")

    @router.delete("/{file_id}", summary="Delete one of your files (row and content)")
    async def delete(file_id: str, request: Request) -> dict[str, Any]:
        if not await _call((await store()).delete_file, file_id, principal_of(request).id):
            raise file_not_found(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    return router


def _fields(form: FormData, principal: Principal) -> tuple[str, UploadFile]:
    """The upload's purpose (one the caller may use) and its file part."""
    purpose = form.get("purpose")
    if not isinstance(purpose, str) or not purpose:
        raise invalid_request(f"`purpose` is required: one of {', '.join(PURPOSES)}.", param="purpose")
    if purpose not in PURPOSES:
        known = " (an OpenAI purpose this gateway does not serve)" if purpose in _OPENAI_ONLY_PURPOSES else ""
        if purpose == "batch_output":
            known = " (batches write their output files; nobody uploads them)"
        raise invalid_request(
            f"`purpose` {purpose!r}{known} is not supported: use one of {', '.join(PURPOSES)}.",
            param="purpose",
        )
    permission = PURPOSE_PERMISSIONS[purpose]
    if permission not in principal.permissions:
        raise permission_denied(
            f"Your role `{principal.role}` may not upload {purpose} files: it needs `{permission}`."
        )
    upload_file = form.get("file")
    if not isinstance(upload_file, UploadFile):
        raise invalid_file("`file` is required: the file to upload, as a multipart file part.")
    return purpose, upload_file


def _check(content: BinaryIO, purpose: str) -> None:
    content.seek(0)
    check_jsonl(content, purpose)


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    # A plain iterator: Starlette reads it in its thread pool, off the event loop.
    try:
        while chunk := source.read(_CHUNK_BYTES):
            yield chunk
    finally:
        source.close()


def _detail(exc: Exception) -> str:
    return str(getattr(exc, "detail", None) or exc)


_UPLOAD: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(PURPOSES)},
                    },
                }
            }
        },
    }
}
