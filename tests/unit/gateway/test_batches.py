"""/v1/batches through the unchanged OpenAI SDK: the gateway app with keys, audit, SQLite, a tmp storage.

The batch job runs in the test (in a thread, as the Ray Job would), its lines sent through
the same gateway app over HTTP with the service key and the creator's caller token.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import openai
import pytest
from ray.serve.llm.openai_api_models import ChatCompletionResponse

from tests.unit.gateway.test_app import FakeStream, served_card
from welip.batches import BatchJobSettings, LineSender, run_batch
from welip.batches._lines import auth_headers
from welip.gateway import GatewayConfig, GatewayCore, build_gateway_app
from welip.store import AuditStore, BatchStore, Database, FileStore, KeyStore, utcnow
from welip.trust import CallerTokens, Trust

T = TypeVar("T")
SECRET = "caller-token-secret-for-the-batch-tests-0123456789"
ROLES = {
    "owner": {"permissions": ["batch", "inference", "embeddings"]},
    "chatter": {"permissions": ["inference"]},
    "evaluator": {"permissions": ["eval_submit"]},
    "batch-service": {"permissions": ["inference", "embeddings", "delegate"]},
}


def _line(custom_id: str, content: str, model: str = "m", **body: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _jsonl(*lines: dict[str, Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


class EchoEngine:
    """Answers each chat with the last user message, 5 prompt and 5 completion tokens."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, method: str, body: Any, adapter: str | None = None) -> FakeStream:
        prompt = body.messages[-1]["content"]
        self.prompts.append(prompt)
        answer = ChatCompletionResponse(
            model="m",
            choices=[
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"echo: {prompt}"},
                    "finish_reason": "stop",
                }
            ],
            usage={"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
        )
        return FakeStream([answer])

    async def check_health(self) -> None:
        pass


@dataclass
class FakeLauncher:
    launched: list[tuple[BatchJobSettings, dict[str, str]]] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    fail: bool = False

    def launch(self, settings: BatchJobSettings, env: dict[str, str]) -> str:
        if self.fail:
            raise ConnectionError("dashboard unreachable")
        self.launched.append((settings, env))
        return f"job-{len(self.launched)}"

    def job_status(self, job_id: str) -> str | None:
        return self.statuses.get(job_id, "RUNNING")


@dataclass
class Gateway:
    app: Any
    database: Database
    files: FileStore
    batches: BatchStore
    launcher: FakeLauncher
    keys: dict[str, str]
    key_ids: dict[str, str]
    engine: EchoEngine

    def client(self, who: str) -> openai.AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gateway")
        return openai.AsyncOpenAI(
            base_url="http://gateway/v1", api_key=self.keys[who], http_client=http, max_retries=0
        )

    def run_job(self, index: int = -1, between_calls: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Run a launched batch's job here, its lines sent to this gateway app in calls of lines_per_call."""
        settings, env = self.launcher.launched[index]
        headers = {**auth_headers_from(env)}

        def execute(rows: list[dict[str, str]], settings: BatchJobSettings) -> Iterator[dict[str, Any]]:
            loop = asyncio.new_event_loop()
            sender = LineSender(settings, headers=headers, transport=httpx.ASGITransport(app=self.app))
            try:
                size = settings.lines_per_call
                for call, start in enumerate(range(0, len(rows), size)):
                    lines = np.array([r["line"] for r in rows[start : start + size]], dtype=object)
                    out = loop.run_until_complete(sender({"line": lines}))
                    for result in out["result"]:
                        yield json.loads(result)
                    if between_calls is not None:
                        between_calls(call)
            finally:
                loop.close()

        return run_batch(settings, batches=self.batches, files=self.files, execute=execute)


def auth_headers_from(env: dict[str, str]) -> dict[str, str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return auth_headers()


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    database = Database(f"sqlite:///{tmp_path}/welip.db")
    database.upgrade()
    keys, key_ids = {}, {}
    for who, role, budget in (
        ("alice", "owner", None),
        ("bob", "owner", None),
        ("carl", "chatter", None),
        ("eve", "evaluator", None),
        ("poor", "owner", 10),
        ("service", "batch-service", None),
    ):
        record, keys[who] = KeyStore(database).create_key(name=who, role=role, token_budget=budget)
        key_ids[who] = record.id
    monkeypatch.setenv("TEST_CALLER_TOKEN_SECRET", SECRET)
    monkeypatch.setenv("TEST_BATCH_KEY", keys["service"])
    monkeypatch.setenv("WELIP_STORAGE_URL", str(tmp_path / "artifacts"))
    config = GatewayConfig.model_validate(
        {
            "auth": {
                "enabled": True,
                "key_cache_s": 0,
                "roles": ROLES,
                "caller_token_secret_env": "TEST_CALLER_TOKEN_SECRET",
            },
            "audit": {"enabled": True, "flush_interval_s": 0.05, "spool_dir": str(tmp_path / "spool")},
            "batches": {
                "api_key_env": "TEST_BATCH_KEY",
                "gateway_url": "http://gateway",
                "lines_per_call": 2,
                "progress_interval_s": 0.001,
                "max_batches_in_flight_per_principal": 3,
            },
        }
    )
    trust = Trust(config, database=database, redis=None)
    files = FileStore(database, str(tmp_path / "artifacts"))
    batches = BatchStore(database)
    launcher = FakeLauncher()
    engine = EchoEngine()
    core = GatewayCore(
        {"m": engine},  # type: ignore[dict-item]
        [served_card("m")],
        config,
        trust,
        files=files,
        batches=batches,
        launcher=launcher,
    )
    yield Gateway(build_gateway_app(core), database, files, batches, launcher, keys, key_ids, engine)
    trust.close()
    database.dispose()


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def _lines(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.splitlines()]


def test_a_batch_runs_every_line_through_the_gateway_as_its_creator(gateway: Gateway) -> None:
    lines = [_line(f"r{i}", f"question {i}") for i in range(5)] + [_line("bad", "x", temperature="hot")]

    async def scenario() -> None:
        client = gateway.client("alice")
        upload = await client.files.create(file=("in.jsonl", _jsonl(*lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"project": "demo"},
        )
        assert batch.id.startswith("batch_") and batch.status == "validating"
        assert batch.request_counts is not None and batch.request_counts.total == 6
        assert batch.metadata == {"project": "demo"} and batch.expires_at == batch.created_at + 86400
        # The job acts as alice: the service key, and a caller token naming alice for the window.
        settings, env = gateway.launcher.launched[0]
        assert settings.batch_id == batch.id
        caller = CallerTokens(SECRET).verify(env["WELIP_BATCH_CALLER_TOKEN"])
        assert caller.id == gateway.key_ids["alice"]
        assert env["WELIP_BATCH_JOB_KEY"] == gateway.keys["service"]

        summary = await asyncio.to_thread(gateway.run_job)
        assert summary["status"] == "completed"
        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.completed_at and done.finalizing_at and done.in_progress_at
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (5, 1)
        assert done.output_file_id and done.error_file_id
        output = _lines((await client.files.content(done.output_file_id)).content)
        answers = {o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in output}
        assert answers == {f"r{i}": f"echo: question {i}" for i in range(5)}
        assert all(o["id"].startswith("batch_req_") and o["error"] is None for o in output)
        assert all(o["response"]["status_code"] == 200 and o["response"]["request_id"] for o in output)
        (error,) = _lines((await client.files.content(done.error_file_id)).content)
        assert error["custom_id"] == "bad" and error["response"]["status_code"] == 400
        assert error["response"]["body"]["error"]["param"] == "temperature"
        described = await client.files.retrieve(done.output_file_id)
        assert described.purpose == "batch_output" and described.filename == f"{batch.id}_output.jsonl"
        # alice may read her output files but not upload one, nor can bob read them.
        with pytest.raises(openai.BadRequestError) as upload_refused:
            await client.files.create(file=("o.jsonl", b"{}\n"), purpose="batch_output")  # type: ignore[arg-type]
        assert upload_refused.value.param == "purpose"
        with pytest.raises(openai.NotFoundError):
            await gateway.client("bob").files.content(done.output_file_id)
        assert [b.id async for b in client.batches.list()] == [batch.id]
        with pytest.raises(openai.BadRequestError) as ended:  # completed: nothing to cancel
            await client.batches.cancel(batch.id)
        assert ended.value.code == "batch_not_cancellable"

    run(scenario)
    assert sorted(gateway.engine.prompts) == [f"question {i}" for i in range(5)]
    # Each line is audited under alice's key, sent via the service.
    deadline = time.monotonic() + 10
    while True:  # the audit writer flushes every 0.05 s
        rows = AuditStore(gateway.database).query_audit(key_id=gateway.key_ids["alice"], limit=100)
        chats = [r for r in rows if r["route"] == "/v1/chat/completions"]
        if len(chats) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sorted(r["status"] for r in chats) == [200] * 5 + [400]
    assert {r["via"] for r in chats} == {gateway.key_ids["service"]}


def test_a_cancel_stops_the_batch_between_calls_and_keeps_what_was_answered(gateway: Gateway) -> None:
    lines = [_line(f"r{i}", f"q{i}") for i in range(8)]

    async def scenario() -> None:
        client = gateway.client("alice")
        upload = await client.files.create(file=("in.jsonl", _jsonl(*lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

        def cancel_after_first_call(call: int) -> None:
            if call == 0:
                cancelling = asyncio.run(gateway.client("alice").batches.cancel(batch.id))
                assert cancelling.status == "cancelling" and cancelling.cancelling_at

        await asyncio.to_thread(gateway.run_job, -1, cancel_after_first_call)
        done = await client.batches.retrieve(batch.id)
        assert done.status == "cancelled" and done.cancelled_at
        assert done.request_counts is not None and done.request_counts.completed < 8
        assert done.output_file_id is not None and done.error_file_id is None
        output = _lines((await client.files.content(done.output_file_id)).content)
        assert len(output) == done.request_counts.completed
        assert {o["custom_id"] for o in output} <= {f"r{i}" for i in range(8)}
        assert (await client.batches.cancel(batch.id)).status == "cancelled"  # already: unchanged

    run(scenario)
    assert len(gateway.engine.prompts) < 8


def test_a_batch_is_its_creators_and_needs_the_batch_permission(gateway: Gateway) -> None:
    async def scenario() -> None:
        alice = gateway.client("alice")
        upload = await alice.files.create(file=("in.jsonl", _jsonl(_line("a", "hi"))), purpose="batch")
        batch = await alice.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await gateway.client("carl").batches.list()
        assert (
            denied.value.code == "permission_denied" and denied.value.body["type"] == "invalid_request_error"
        )  # type: ignore[index]
        bob = gateway.client("bob")
        for call in (bob.batches.retrieve(batch.id), bob.batches.cancel(batch.id)):
            with pytest.raises(openai.NotFoundError) as missing:
                await call
            assert missing.value.code == "batch_not_found"
        assert [b.id async for b in bob.batches.list()] == []
        with pytest.raises(openai.NotFoundError) as not_bobs:  # alice's file is not bob's either
            await bob.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert not_bobs.value.code == "file_not_found"

    run(scenario)
    assert len(gateway.launcher.launched) == 1


def test_a_caller_over_budget_cannot_start_a_batch(gateway: Gateway) -> None:
    async def scenario() -> None:
        poor = gateway.client("poor")
        upload = await poor.files.create(file=("in.jsonl", _jsonl(_line("a", "hi"))), purpose="batch")
        await poor.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
        with pytest.raises(openai.RateLimitError) as refused:
            await poor.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert refused.value.code == "rate_limit_exceeded" and "token budget" in refused.value.message
        assert [b.id async for b in poor.batches.list()] == []

    run(scenario)
    assert gateway.launcher.launched == []


def test_bad_batches_are_refused_with_400_naming_the_parameter(gateway: Gateway) -> None:
    async def scenario() -> None:
        client = gateway.client("alice")
        good = await client.files.create(file=("in.jsonl", _jsonl(_line("a", "hi"))), purpose="batch")
        unknown = await client.files.create(
            file=("in.jsonl", _jsonl(_line("a", "hi"), _line("b", "hi", model="gpt-9"))), purpose="batch"
        )
        streamed = await client.files.create(
            file=("s.jsonl", _jsonl(_line("a", "hi", stream=True))), purpose="batch"
        )
        chat = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"input_file_id": unknown.id, **chat}, "input_file_id", "Line 2"),
            ({"input_file_id": streamed.id, **chat}, "input_file_id", "`stream`"),
            ({"input_file_id": good.id, **chat, "endpoint": "/v1/embeddings"}, "input_file_id", "endpoint"),
            ({"input_file_id": good.id, **chat, "endpoint": "/v1/responses"}, "endpoint", "/v1/responses"),
            ({"input_file_id": good.id, **chat, "completion_window": "1h"}, "completion_window", '"1h"'),
            (
                {"input_file_id": good.id, **chat, "output_expires_after": {"seconds": 3600}},
                "output_expires_after",
                "not supported",
            ),
            (
                {"input_file_id": good.id, **chat, "metadata": {f"k{i}": "v" for i in range(17)}},
                "metadata",
                "16",
            ),
            ({**chat}, "input_file_id", "required"),
        ]
        for body, param, words in cases:
            extra = {
                k: v
                for k, v in body.items()
                if k not in ("input_file_id", "endpoint", "completion_window", "metadata")
            }
            with pytest.raises(openai.BadRequestError) as refused:
                await client.batches.create(
                    input_file_id=body.get("input_file_id", openai.NOT_GIVEN),  # type: ignore[arg-type]
                    endpoint=body["endpoint"],
                    completion_window=body["completion_window"],
                    metadata=body.get("metadata", openai.NOT_GIVEN),
                    extra_body=extra or None,
                )
            assert refused.value.param == param and words in refused.value.message, (
                body,
                refused.value.message,
            )
        assert "gpt-9" in (await _message(client, unknown.id))
        # A malformed file never becomes one; an evals file is not a batch's.
        with pytest.raises(openai.BadRequestError) as malformed:
            await client.files.create(file=("bad.jsonl", b'{"custom_id": "a"\n'), purpose="batch")
        assert malformed.value.param == "file" and "Line 1" in malformed.value.message

    run(scenario)
    assert gateway.launcher.launched == []


async def _message(client: openai.AsyncOpenAI, file_id: str) -> str:
    try:
        await client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    except openai.BadRequestError as exc:
        return exc.message
    raise AssertionError("not refused")


def test_a_file_of_another_purpose_is_not_a_batch_input(gateway: Gateway, tmp_path: Path) -> None:
    record = gateway.files.create_file(
        owner=gateway.key_ids["alice"],
        purpose="evals",
        filename="e.jsonl",
        content=io.BytesIO(b'{"q": 1}\n'),
        expires_at=None,
    )

    async def scenario() -> None:
        with pytest.raises(openai.BadRequestError) as refused:
            await gateway.client("alice").batches.create(
                input_file_id=record.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert refused.value.param == "input_file_id" and "purpose `evals`" in refused.value.message

    run(scenario)


def test_a_batch_whose_job_never_ran_or_died_ends_failed_or_expired(gateway: Gateway) -> None:
    async def scenario() -> None:
        client = gateway.client("alice")
        upload = await client.files.create(file=("in.jsonl", _jsonl(_line("a", "hi"))), purpose="batch")
        args = {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        died = await client.batches.create(**args)  # type: ignore[arg-type]
        gateway.launcher.statuses["job-1"] = "FAILED"
        failed = await client.batches.retrieve(died.id)
        assert failed.status == "failed" and failed.errors and failed.errors.data
        assert failed.errors.data[0].code == "batch_job_failed"
        unrun = await client.batches.create(**args)  # type: ignore[arg-type]
        gateway.batches.move(unrun.id, None, expires_at=utcnow() - timedelta(seconds=1))
        gateway.launcher.statuses["job-2"] = "PENDING"
        assert (await client.batches.retrieve(unrun.id)).status == "expired"
        gateway.launcher.fail = True
        never = await client.batches.create(**args)  # type: ignore[arg-type]
        assert never.status == "failed" and never.errors and never.errors.data[0].code == "launch_failed"

    run(scenario)


def test_an_expired_batch_keeps_its_answers_and_lists_the_rest_as_expired(gateway: Gateway) -> None:
    lines = [_line(f"r{i}", f"q{i}") for i in range(6)]

    async def scenario() -> None:
        client = gateway.client("alice")
        upload = await client.files.create(file=("in.jsonl", _jsonl(*lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

        def expire(call: int) -> None:
            gateway.batches.move(batch.id, None, expires_at=utcnow() - timedelta(seconds=1))

        await asyncio.to_thread(gateway.run_job, -1, expire)
        done = await client.batches.retrieve(batch.id)
        assert done.status == "expired" and done.expired_at and done.request_counts is not None
        assert done.request_counts.completed + done.request_counts.failed == 6
        assert done.error_file_id is not None
        errors = _lines((await client.files.content(done.error_file_id)).content)
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}
        assert len(errors) == done.request_counts.failed > 0

    run(scenario)


def test_too_many_unfinished_batches_are_refused(gateway: Gateway) -> None:
    async def scenario() -> None:
        client = gateway.client("alice")
        upload = await client.files.create(file=("in.jsonl", _jsonl(_line("a", "hi"))), purpose="batch")
        args = {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        for _ in range(3):
            await client.batches.create(**args)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as refused:
            await client.batches.create(**args)  # type: ignore[arg-type]
        assert refused.value.code == "batch_limit_reached"
        page = await client.batches.list(limit=2)
        assert len(page.data) == 2 and page.has_more

    run(scenario)


# -- the line sender alone ------------------------------------------------------------------


def _settings(**overrides: Any) -> BatchJobSettings:
    return BatchJobSettings(batch_id="batch_x", gateway_url="http://gateway", **overrides)


def _send(handler: Callable[[httpx.Request], httpx.Response], **settings: Any) -> dict[str, Any]:
    sender = LineSender(_settings(**settings), headers={}, transport=httpx.MockTransport(handler))
    line = json.dumps(_line("r1", "hi"))
    out = asyncio.run(sender({"line": np.array([line], dtype=object)}))
    return json.loads(out["result"][0])  # type: ignore[no-any-return]


def test_a_line_answered_429_is_retried_after_retry_after() -> None:
    answers = [
        httpx.Response(429, headers={"retry-after": "0"}, json={"error": {}}),
        httpx.Response(200, json={"ok": 1}),
    ]
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return answers[len(calls) - 1]

    result = _send(handler)
    assert (result["status_code"], result["body"], len(calls)) == (200, {"ok": 1}, 2)
    assert calls[0].url.path == "/v1/chat/completions" and json.loads(calls[0].content)["model"] == "m"


def test_a_line_told_to_wait_a_day_or_out_of_retries_ends_with_its_error() -> None:
    calls: list[httpx.Request] = []

    def budget_spent(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(
            429, headers={"retry-after": "86400"}, json={"error": {"code": "rate_limit_exceeded"}}
        )

    result = _send(budget_spent)
    assert (result["status_code"], len(calls)) == (429, 1)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    result = _send(down, max_retries=1)
    assert result["status_code"] is None and result["body"]["error"]["code"] == "gateway_unreachable"
