"""/v1/files through the unchanged OpenAI SDK: the gateway app with keys, audit, SQLite and a tmp storage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
from sqlalchemy import exc as sa_exc

from tests.unit.gateway.test_app import FakeEngine, served_card
from welip.gateway import GatewayConfig, GatewayCore, build_gateway_app
from welip.store import AuditStore, Database, FileStore, KeyStore
from welip.trust import Trust

T = TypeVar("T")
MAX_FILE_BYTES = 4096
MAX_STORED_BYTES = 6000
ROLES = {
    "owner": {"permissions": ["batch", "finetune_submit", "eval_submit"]},
    "evaluator": {"permissions": ["eval_submit"]},
    "chatter": {"permissions": ["inference"]},
}
BATCH_LINE = {
    "custom_id": "r1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
}
BATCH = (json.dumps(BATCH_LINE) + "\n" + json.dumps({**BATCH_LINE, "custom_id": "r2"}) + "\n").encode()
CHAT_ROW = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


@dataclass
class Gateway:
    app: Any
    trust: Trust
    store: FileStore
    database: Database
    keys: dict[str, str]
    storage: Path

    def client(self, who: str) -> openai.AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gateway")
        return openai.AsyncOpenAI(
            base_url="http://gateway/v1", api_key=self.keys[who], http_client=http, max_retries=0
        )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    database = Database(f"sqlite:///{tmp_path}/welip.db")
    database.upgrade()
    config = GatewayConfig.model_validate(
        {
            "auth": {"enabled": True, "key_cache_s": 0, "roles": ROLES},
            "audit": {"enabled": True, "flush_interval_s": 0.05, "spool_dir": str(tmp_path / "spool")},
            "files": {"max_file_bytes": MAX_FILE_BYTES, "max_stored_bytes_per_principal": MAX_STORED_BYTES},
        }
    )
    trust = Trust(config, database=database, redis=None)
    store = FileStore(database, str(tmp_path / "artifacts"))
    engines = {"m": FakeEngine([])}
    core = GatewayCore(dict(engines), [served_card("m")], config, trust, files=store)  # type: ignore[arg-type]
    keys = {}
    for who, role in (("alice", "owner"), ("bob", "owner"), ("eve", "evaluator"), ("carl", "chatter")):
        _, keys[who] = KeyStore(database).create_key(name=who, role=role)
    yield Gateway(build_gateway_app(core), trust, store, database, keys, tmp_path / "artifacts")
    trust.close()
    database.dispose()


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def _stored(storage: Path) -> list[str]:
    return sorted(p.name for p in (storage / "files").glob("*")) if (storage / "files").exists() else []


def test_upload_retrieve_content_and_delete_with_the_openai_sdk(gateway: Gateway) -> None:
    async def scenario() -> None:
        client = gateway.client("alice")
        created = await client.files.create(file=("batch.jsonl", BATCH), purpose="batch")
        assert created.id.startswith("file-") and len(created.id) == 37
        assert (created.object, created.bytes, created.filename) == ("file", len(BATCH), "batch.jsonl")
        assert (created.purpose, created.status) == ("batch", "processed")
        assert created.expires_at is not None and created.expires_at - created.created_at == 30 * 86400
        assert await client.files.retrieve(created.id) == created
        assert (await client.files.content(created.id)).content == BATCH
        assert _stored(gateway.storage) == [created.id]
        deleted = await client.files.delete(created.id)
        assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
        with pytest.raises(openai.NotFoundError) as missing:
            await client.files.retrieve(created.id)
        assert missing.value.code == "file_not_found"
        assert _stored(gateway.storage) == []

    run(scenario)


def test_list_pages_in_creation_order_and_filters_by_purpose(gateway: Gateway) -> None:
    async def scenario() -> None:
        client = gateway.client("alice")
        ids = []
        for i in range(3):
            row = json.dumps({"item": {"q": i}}).encode()
            ids.append((await client.files.create(file=(f"e{i}.jsonl", row), purpose="evals")).id)
        tune = await client.files.create(file=("t.jsonl", json.dumps(CHAT_ROW).encode()), purpose="fine-tune")
        first = await client.files.list(purpose="evals", limit=2)
        assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
        assert [f.id async for f in client.files.list(purpose="evals", limit=2)] == ids[::-1]
        assert [f.id async for f in client.files.list(purpose="evals", order="asc", limit=1)] == ids
        assert {f.id async for f in client.files.list()} == {*ids, tune.id}

    run(scenario)


def test_another_principals_file_is_not_found(gateway: Gateway) -> None:
    async def scenario() -> None:
        mine = await gateway.client("alice").files.create(file=("b.jsonl", BATCH), purpose="batch")
        bob = gateway.client("bob")
        for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
            with pytest.raises(openai.NotFoundError) as refused:
                await call(mine.id)
            assert refused.value.code == "file_not_found"
        assert [f async for f in bob.files.list()] == []
        assert (await gateway.client("alice").files.retrieve(mine.id)).id == mine.id

    run(scenario)


def test_a_key_without_the_purposes_permission_is_refused(gateway: Gateway) -> None:
    async def scenario() -> None:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await gateway.client("eve").files.create(file=("b.jsonl", BATCH), purpose="batch")
        assert refused.value.code == "permission_denied" and "`batch`" in refused.value.message
        rows = json.dumps({"item": {}}).encode()
        assert (await gateway.client("eve").files.create(file=("e.jsonl", rows), purpose="evals")).bytes
        with pytest.raises(openai.PermissionDeniedError):  # no files permission at all: the route family
            await gateway.client("carl").files.list()

    run(scenario)
    assert len(_stored(gateway.storage)) == 1


BAD_FILES = [
    ("batch", b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}\n'
     b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}\n',
     "Line 2, field `custom_id`"),
    ("batch", b'\n{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}\n',
     "Line 2, field `method`"),
    ("batch", b'{"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": {"model": "m"}}\n',
     "Line 1, field `url`"),
    ("batch", b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}\n',
     "Line 1, field `body.model`"),
    ("fine-tune", json.dumps(CHAT_ROW).encode() + b'\n{"messages": [{"role": "user", "content": "hi"}]}\n',
     "Line 2, field `messages`: the conversation has no assistant message"),
    ("fine-tune", b'{"messages": [{"role": "robot", "content": "x"}]}\n',
     "Line 1, field `messages`: message 0"),
    ("evals", b'{"item": {}}\n{"item": \n', "Line 2 is not JSON"),
    ("evals", b'{"item": {}}\n[1, 2]\n', "Line 2 must be a JSON object"),
    ("evals", b'{"item": "\xff"}\n', "Line 1 is not UTF-8"),
    ("evals", b"\n  \n", "The file is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("purpose", "content", "message"), BAD_FILES)
def test_malformed_jsonl_names_the_line_and_field(
    gateway: Gateway, purpose: Any, content: bytes, message: str
) -> None:
    async def scenario() -> None:
        with pytest.raises(openai.BadRequestError) as refused:
            await gateway.client("alice").files.create(file=("x.jsonl", content), purpose=purpose)
        assert refused.value.param == "file" and refused.value.code == "invalid_file"
        assert message in refused.value.message

    run(scenario)
    assert _stored(gateway.storage) == []


@pytest.mark.parametrize("purpose", ["assistants", "vision", "user_data", "fine_tune"])
def test_a_purpose_this_gateway_does_not_serve_is_a_400_on_purpose(gateway: Gateway, purpose: str) -> None:
    async def scenario() -> None:
        with pytest.raises(openai.BadRequestError) as refused:
            await gateway.client("alice").files.create(file=("b.jsonl", BATCH), purpose=purpose)  # type: ignore[arg-type]
        assert refused.value.param == "purpose" and "batch, fine-tune, evals" in refused.value.message

    run(scenario)


def test_a_file_over_max_file_bytes_is_413_and_not_stored(gateway: Gateway) -> None:
    big = (json.dumps({"item": {"text": "x" * 100}}) + "\n").encode() * 50  # > 4096 bytes
    assert len(big) > MAX_FILE_BYTES

    async def scenario() -> None:
        with pytest.raises(openai.APIStatusError) as refused:
            await gateway.client("alice").files.create(file=("big.jsonl", big), purpose="evals")
        assert refused.value.status_code == 413 and refused.value.code == "request_too_large"

    run(scenario)
    assert _stored(gateway.storage) == []


def test_uploads_over_the_principals_stored_bytes_are_refused_until_files_are_deleted(
    gateway: Gateway,
) -> None:
    row = (
        json.dumps({"item": {"text": "x" * 100}}) + "\n"
    ).encode() * 25  # about 3 KiB, under max_file_bytes

    async def scenario() -> None:
        alice = gateway.client("alice")
        first = await alice.files.create(file=("a.jsonl", row), purpose="evals")
        with pytest.raises(openai.BadRequestError) as refused:
            await alice.files.create(file=("b.jsonl", row), purpose="evals")
        assert (
            refused.value.code == "storage_quota_exceeded" and str(MAX_STORED_BYTES) in refused.value.message
        )
        assert (await gateway.client("bob").files.create(file=("b.jsonl", row), purpose="evals")).bytes
        await alice.files.delete(first.id)
        assert (await alice.files.create(file=("b.jsonl", row), purpose="evals")).bytes == len(row)

    run(scenario)


def test_an_expired_file_is_not_found_and_its_content_is_removed(gateway: Gateway) -> None:
    owner = next(k for k in KeyStore(gateway.database).list_keys() if k.name == "alice").id
    past = datetime.now(UTC) - timedelta(seconds=1)
    with open(gateway.storage.parent / "old.jsonl", "wb+") as f:
        f.write(BATCH)
        f.seek(0)
        old = gateway.store.create_file(
            owner=owner, purpose="batch", filename="o", content=f, expires_at=past
        )

    async def scenario() -> None:
        alice = gateway.client("alice")
        with pytest.raises(openai.NotFoundError):
            await alice.files.retrieve(old.id)
        assert [f async for f in alice.files.list()] == []

    assert _stored(gateway.storage) == [old.id]
    run(scenario)
    assert _stored(gateway.storage) == []


def test_every_files_call_is_audited(gateway: Gateway) -> None:
    async def scenario() -> None:
        alice = gateway.client("alice")
        created = await alice.files.create(file=("b.jsonl", BATCH), purpose="batch")
        await alice.files.retrieve(created.id)
        await alice.files.delete(created.id)
        with pytest.raises(openai.PermissionDeniedError):
            await gateway.client("eve").files.create(file=("b.jsonl", BATCH), purpose="batch")

    run(scenario)
    gateway.trust.close()
    rows = AuditStore(gateway.database).query_audit(limit=100)
    seen = sorted((r["method"], r["route"].split("/file-")[0], r["status"]) for r in rows)
    assert seen == [
        ("DELETE", "/v1/files", 200),
        ("GET", "/v1/files", 200),
        ("POST", "/v1/files", 200),
        ("POST", "/v1/files", 403),
    ]


def test_without_auth_or_audit_the_store_opens_on_the_first_files_request(tmp_path: Path) -> None:
    """A gateway whose trust layer needs no database starts without one: serving never waits
    for (or fails on) the database; /v1/files opens it once, and answers 503 while it is down."""
    config = GatewayConfig.model_validate({})
    opened: list[int] = []
    database_up = [False]

    def open_store() -> FileStore:
        if not database_up[0]:
            raise sa_exc.OperationalError("connect", {}, Exception("connection refused"))
        opened.append(1)
        database = Database(f"sqlite:///{tmp_path}/welip.db")
        database.upgrade()
        return FileStore(database, str(tmp_path / "artifacts"))

    core = GatewayCore({"m": FakeEngine([])}, [served_card("m")], config, files=open_store)  # type: ignore[dict-item]
    app = build_gateway_app(core)

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
        client = openai.AsyncOpenAI(
            base_url="http://gateway/v1", api_key="none", http_client=http, max_retries=0
        )
        assert (await client.models.list()).data[0].id == "m"  # serving needs no database
        with pytest.raises(openai.APIStatusError) as down:
            await client.files.list()
        assert (down.value.status_code, down.value.code) == (503, "database_unavailable")
        assert down.value.response.headers["retry-after"] == "5"
        database_up[0] = True
        created = await client.files.create(file=("batch.jsonl", BATCH), purpose="batch")
        assert [f.id for f in (await client.files.list()).data] == [created.id]
        assert opened == [1]  # opened once, then kept

    run(scenario)
