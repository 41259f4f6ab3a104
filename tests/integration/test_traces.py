"""One request, one trace: read back from the session's real Phoenix (its OTLP receiver).

Every process of the session exports its spans to Phoenix (conftest sets
``OTEL_EXPORTER_OTLP_ENDPOINT`` before Ray starts). Each test sends a request carrying a
W3C ``traceparent`` of its own and reads that trace back through Phoenix's API.
"""

from __future__ import annotations

import secrets

import httpx

from tests.integration.conftest import EMBEDDING_MODEL, MODEL, SHORT_MODEL
from tests.phoenix_server import PhoenixServer, children, has, named, traceparent, wait_for_trace


def test_chat_through_a_handle_is_one_trace_gateway_auth_limit_engine(
    http: httpx.Client, phoenix: PhoenixServer
) -> None:
    # A user key with a request limit: the rate-limit check runs (and is a span).
    key = http.post("/admin/keys", json={"name": "traces", "role": "user", "rpm": 1000}).json()["key"]
    trace_id, caller, header = traceparent()
    secret = f"remember the passphrase {secrets.token_hex(4)} and say ok"
    body = {"model": SHORT_MODEL, "messages": [{"role": "user", "content": secret}], "max_tokens": 8}
    answer = http.post(
        "/v1/chat/completions", json=body, headers={**header, "Authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]

    spans = wait_for_trace(phoenix, trace_id, has("welip.gateway.request", "welip.auth", "vllm.chat"))
    (request,) = named(spans, "welip.gateway.request")
    assert request["parent_id"] == caller  # the caller's span is the parent
    assert request["span_kind"] == "CHAIN"
    assert request["attributes"]["llm.model_name"] == SHORT_MODEL
    assert request["attributes"]["http.response.status_code"] == 200
    assert request["attributes"]["user.id"].startswith("key_")
    assert {s["name"] for s in children(spans, request)} >= {"welip.auth", "welip.rate_limit", "vllm.chat"}
    # The engine's span, made in the engine replica's process (a Serve handle away), joined
    # the request's trace through the traceparent the gateway put in the handle call.
    (engine,) = children(spans, request, "vllm.chat")
    a = engine["attributes"]
    assert engine["span_kind"] == "LLM" and a["llm.model_name"] == SHORT_MODEL
    assert (a["llm.token_count.prompt"], a["llm.token_count.completion"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.request.max_tokens"]) == (usage["prompt_tokens"], 8)
    # Content capture is off: the prompt is on no span, the answer neither.
    text = answer.json()["choices"][0]["message"]["content"]
    dump = repr([s["attributes"] for s in spans])
    assert secret not in dump and (len(text) < 8 or text not in dump)


def test_streamed_chat_on_the_in_process_engine_records_time_to_first_token(
    http: httpx.Client, phoenix: PhoenixServer
) -> None:
    trace_id, _, header = traceparent()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": 16,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body, headers=header) as response:
        assert response.status_code == 200
        chunks = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert chunks

    spans = wait_for_trace(phoenix, trace_id, has("welip.gateway.request", "vllm.chat"))
    (request,) = named(spans, "welip.gateway.request")
    (engine,) = children(spans, request, "vllm.chat")
    a = engine["attributes"]
    assert 0 < a["gen_ai.server.time_to_first_token"] < 60
    # The gateway asked the engine for usage on the stream, so the span has the counts.
    assert 0 < a["llm.token_count.completion"] <= 16
    assert a["llm.token_count.total"] == a["llm.token_count.prompt"] + a["llm.token_count.completion"]


def test_embeddings_request_has_an_embedding_span_in_the_embedding_replica(
    http: httpx.Client, phoenix: PhoenixServer
) -> None:
    trace_id, _, header = traceparent()
    body = {"model": EMBEDDING_MODEL, "input": ["one text", "and another"]}
    answer = http.post("/v1/embeddings", json=body, headers=header)
    assert answer.status_code == 200, answer.text

    spans = wait_for_trace(phoenix, trace_id, has("welip.gateway.request", "embeddings"))
    (request,) = named(spans, "welip.gateway.request")
    (embedding,) = children(spans, request, "embeddings")
    assert embedding["span_kind"] == "EMBEDDING"
    assert embedding["attributes"]["embedding.model_name"] == EMBEDDING_MODEL
    assert embedding["attributes"]["llm.token_count.prompt"] == answer.json()["usage"]["prompt_tokens"]
