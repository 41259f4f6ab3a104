"""/v1/files on the running stack with the unchanged OpenAI SDK: PostgreSQL metadata, local storage."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration


def _line(custom_id: str) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


BATCH = "".join(json.dumps(_line(f"r{i}")) + "\n" for i in range(3)).encode()


def _client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=60)


def test_files_round_trip_owned_by_their_uploader(
    client: openai.OpenAI, http: httpx.Client, base_url: str
) -> None:
    created = client.files.create(file=("batch.jsonl", BATCH), purpose="batch")
    assert (created.object, created.purpose, created.status, created.bytes) == (
        "file",
        "batch",
        "processed",
        len(BATCH),
    )
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == BATCH
    assert created.id in {f.id for f in client.files.list(purpose="batch")}

    response = http.post("/admin/keys", json={"name": f"it-{uuid.uuid4().hex[:6]}", "role": "batch-user"})
    assert response.status_code == 201, response.text
    key = response.json()
    other = _client(base_url, key["key"])
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(created.id)
    with pytest.raises(openai.PermissionDeniedError):  # batch-user holds batch only
        other.files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as refused:
        other.files.create(file=("b.jsonl", BATCH + b'{"custom_id": "r0"}\n'), purpose="batch")
    assert refused.value.param == "file" and "Line 4, field `custom_id`" in refused.value.message

    assert client.files.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    # Every call is audited, refusals included, under the caller's key.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        audit = http.get("/admin/audit", params={"key_id": key["id"], "limit": 100})
        statuses = sorted(
            row["status"] for row in audit.json()["data"] if row["route"].startswith("/v1/files")
        )
        if len(statuses) >= 3:
            break
        time.sleep(0.3)
    assert statuses == [400, 403, 404]
