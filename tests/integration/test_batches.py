"""/v1/batches on the running stack with the unchanged OpenAI SDK: a Ray Job per batch over Ray Data.

The batch's lines go through the session's gateway (keys, limits, audit, guardrails) as the
batch's creator; the answers are compared with the same requests sent online.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch

from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration

QUESTIONS = [
    "What is the capital of France?",
    "Name a color of the sky.",
    "What is 2 plus 2?",
    "Say hello in Spanish.",
    "What animal says moo?",
    "Name a planet.",
    "What is the opposite of hot?",
    "How many legs does a cat have?",
    "What is frozen water called?",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "What is the first letter of the alphabet?",
]
GREEDY = {"temperature": 0, "max_tokens": 12}


def _client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=120)


def _line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _create(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Batch:
    upload = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def _wait(client: openai.OpenAI, batch_id: str, until: tuple[str, ...], timeout_s: float = 420) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        assert time.monotonic() < deadline, f"{batch_id} still {batch.status} after {timeout_s}s: {batch}"
        time.sleep(0.5)


def test_a_batch_answers_greedy_requests_as_the_online_endpoint_does(client: openai.OpenAI) -> None:
    lines = [_line(f"q{i}", q, user="batch", **GREEDY) for i, q in enumerate(QUESTIONS)]
    created_at = time.monotonic()
    batch = _create(client, lines)
    assert batch.status == "validating" and batch.request_counts and batch.request_counts.total == len(lines)
    running = _wait(client, batch.id, ("in_progress", "finalizing", "completed", "failed"))
    started_s = time.monotonic() - created_at
    done = _wait(client, batch.id, ("completed", "failed", "expired", "cancelled"))
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == len(lines)
    assert done.error_file_id is None and done.output_file_id is not None
    output = [json.loads(row) for row in client.files.content(done.output_file_id).content.splitlines()]
    assert all(o["response"]["status_code"] == 200 and o["id"].startswith("batch_req_") for o in output)
    in_batch = {o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in output}

    # The same requests online (another `user`, so the response cache answers none of them).
    def online(i: int) -> str:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTIONS[i]}], user="online", **GREEDY
        )
        return answer.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        answers = dict(
            zip(
                [f"q{i}" for i in range(len(QUESTIONS))], pool.map(online, range(len(QUESTIONS))), strict=True
            )
        )
    agreement = sum(in_batch[k] == answers[k] for k in answers) / len(answers)
    print(
        f"batch {batch.id}: {running.status} {started_s:.1f}s after create; greedy agreement with online "
        f"{agreement:.2f} ({len(answers)} requests)"
    )
    # vLLM is not batch-invariant: a different batch composition may change a late token.
    assert agreement >= 0.75, {k: (in_batch[k], answers[k]) for k in answers if in_batch[k] != answers[k]}


def test_a_cancelled_batch_stops_and_keeps_what_was_answered(client: openai.OpenAI) -> None:
    lines = [_line(f"r{i}", f"Write a long story about the number {i}.", max_tokens=64) for i in range(300)]
    batch = _create(client, lines)
    _wait(client, batch.id, ("in_progress",), timeout_s=300)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = _wait(client, batch.id, ("cancelled", "completed", "failed"), timeout_s=300)
    assert done.status == "cancelled" and done.cancelled_at, done
    assert done.request_counts is not None and done.request_counts.completed < len(lines)
    if done.request_counts.completed:
        assert done.output_file_id is not None
        output = client.files.content(done.output_file_id).content.splitlines()
        assert len(output) == done.request_counts.completed


def test_batches_are_their_creators_need_batch_and_a_budget(
    client: openai.OpenAI, http: httpx.Client, base_url: str
) -> None:
    def key(role: str, **limits: Any) -> str:
        response = http.post(
            "/admin/keys", json={"name": f"it-{uuid.uuid4().hex[:6]}", "role": role, **limits}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    batch = _create(client, [_line("a", "Say hi.", max_tokens=4)])
    with pytest.raises(openai.PermissionDeniedError) as denied:  # role user: no `batch`
        _client(base_url, key("user")).batches.list()
    assert denied.value.code == "permission_denied" and denied.value.status_code == 403
    assert denied.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    other = _client(base_url, key("batch-user"))
    with pytest.raises(openai.NotFoundError) as missing:
        other.batches.retrieve(batch.id)
    assert missing.value.code == "batch_not_found"

    # A key whose token budget the first answer spends exactly cannot start a batch.
    messages = [{"role": "user", "content": "Write a long story."}]
    probe = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert probe.usage is not None and probe.choices[0].finish_reason == "length"
    poor = _client(base_url, key("admin", token_budget=probe.usage.total_tokens))
    poor.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0, user="poor")  # type: ignore[arg-type]
    upload = poor.files.create(file=("in.jsonl", _jsonl([_line("a", "Say hi.")])), purpose="batch")
    with pytest.raises(openai.RateLimitError) as refused:
        poor.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.code == "rate_limit_exceeded" and "token budget" in refused.value.message
    _wait(client, batch.id, ("completed", "failed"))


def test_bad_batch_input_is_a_400_naming_the_parameter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as malformed:
        client.files.create(file=("bad.jsonl", b'{"custom_id": "a", \n'), purpose="batch")
    assert malformed.value.param == "file"
    evals = client.files.create(file=("e.jsonl", b'{"q": 1}\n'), purpose="evals")
    unknown = client.files.create(
        file=("u.jsonl", _jsonl([_line("a", "hi", model="gpt-4o")])), purpose="batch"
    )
    for file_id, words in ((evals.id, "purpose `evals`"), (unknown.id, "`gpt-4o`")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert refused.value.param == "input_file_id" and words in refused.value.message
