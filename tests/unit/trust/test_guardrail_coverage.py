"""Guardrails on every text a model sees or returns (issue 16).

Input: the prompt as token ids, ``tools``, tool-call arguments and names in messages,
``name``, reasoning, ``chat_template_kwargs``, ``documents``, ``suffix``; prompt
embeddings the guardrail cannot read are refused. Output: ``tool_calls`` and reasoning,
whole or streamed, and the token ids or logprobs that would carry the unfiltered answer.
The audit's recorded body is the redacted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ray.serve.llm.openai_api_models import ChatCompletionResponse

from tests.unit.gateway.test_app import FakeEngine, served_card
from welip.gateway import GatewayConfig, GatewayCore, build_gateway_app
from welip.models import resolve_model_path
from welip.store import AuditStore, Database
from welip.trust import TokenCounter, Trust

RRN, CARD = "900101-1234567", "4111 1111 1111 1111"
REDACT = {"pii": ["kr_rrn", "credit_card"], "pii_action": "redact"}
BLOCK = {"blocklist_keywords": ["forbidden"]}
USAGE = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.load(resolve_model_path("smollm2-135m-instruct"))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/welip.db")
    database.upgrade()
    yield database
    database.dispose()


def _client(
    engine: FakeEngine,
    guardrails: dict[str, Any],
    *,
    counter: TokenCounter | None = None,
    db: Database | None = None,
    tmp_path: Path | None = None,
) -> TestClient:
    settings: dict[str, Any] = {"guardrails": guardrails}
    if db is not None:
        spool = str(tmp_path / "spool") if tmp_path else None
        settings["audit"] = {
            "enabled": True,
            "flush_interval_s": 0.05,
            "record_prompts": True,
            "spool_dir": spool,
        }
    config = GatewayConfig.model_validate(settings)
    counters = {"m": counter} if counter is not None else {}
    trust = Trust(config, database=db, redis=None, replica="r1", token_counters=counters)
    core = GatewayCore({"m": engine}, [served_card("m")], config, trust)
    return TestClient(build_gateway_app(core))


def _answer(message: dict[str, Any]) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        model="m",
        choices=[{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
        usage=USAGE,
    )


def _event(delta: dict[str, Any], finish: str | None = None) -> str:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


def _call(arguments: str, name: str | None = None, index: int = 0) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    return {"index": index, "id": f"call_{index}", "type": "function", "function": function}


def _whole_call(arguments: str, name: str) -> dict[str, Any]:
    """A tool call of a request's message or of a whole answer (no stream index)."""
    return {"id": "call_0", "type": "function", "function": {"name": name, "arguments": arguments}}


def _refusal(response: Any) -> tuple[int, str | None, str | None]:
    """Status, code and param of an OpenAI-shaped refusal."""
    assert response.status_code >= 400, f"answered {response.status_code}, not refused"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return response.status_code, error["code"], error["param"]


TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a customer up.",
        "parameters": {"type": "object", "properties": {"id": {"type": "string", "description": "The id."}}},
    },
}
ASKED = {"role": "user", "content": "hello"}


def _tool_call_turn(arguments: str, name: str = "lookup") -> list[dict[str, Any]]:
    return [
        ASKED,
        {"role": "assistant", "content": None, "tool_calls": [_whole_call(arguments, name)]},
        {"role": "tool", "tool_call_id": "call_0", "content": "done"},
    ]


# -- input ------------------------------------------------------------------------

CHAT_PLACES: dict[str, dict[str, Any]] = {
    "message name": {"messages": [{**ASKED, "name": "forbidden"}]},
    "tool-call arguments": {"messages": _tool_call_turn('{"q": "forbidden"}')},
    "tool-call name": {"messages": _tool_call_turn("{}", name="forbidden")},
    "assistant reasoning": {
        "messages": [ASKED, {"role": "assistant", "content": "x", "reasoning": "forbidden"}, ASKED]
    },
    "assistant reasoning_content": {
        "messages": [ASKED, {"role": "assistant", "content": "x", "reasoning_content": "forbidden"}, ASKED]
    },
    "thinking content part": {
        "messages": [{"role": "user", "content": [{"type": "thinking", "thinking": "forbidden"}]}]
    },
    "tool description": {
        "messages": [ASKED],
        "tools": [{**TOOL, "function": {**TOOL["function"], "description": "forbidden"}}],
    },
    "tool parameter schema": {
        "messages": [ASKED],
        "tools": [
            {
                **TOOL,
                "function": {
                    **TOOL["function"],
                    "parameters": {"type": "object", "properties": {"forbidden": {"type": "string"}}},
                },
            }
        ],
    },
    "chat_template_kwargs value": {"messages": [ASKED], "chat_template_kwargs": {"persona": "forbidden"}},
    "chat_template_kwargs key": {"messages": [ASKED], "chat_template_kwargs": {"forbidden": True}},
    "documents": {"messages": [ASKED], "documents": [{"title": "t", "text": "forbidden"}]},
}


@pytest.mark.parametrize("place", sorted(CHAT_PLACES))
def test_input_guardrail_checks_every_chat_text_the_template_renders(place: str) -> None:
    engine = FakeEngine([_answer({"content": "ok"})])
    client = _client(engine, {"input": BLOCK})
    response = client.post("/v1/chat/completions", json={"model": "m", **CHAT_PLACES[place]})
    assert _refusal(response)[:2] == (400, "content_policy_violation"), place
    assert engine.calls == []


def test_input_redaction_reaches_tools_tool_calls_and_template_kwargs_but_leaves_media_alone() -> None:
    engine = FakeEngine([_answer({"content": "ok"})])
    client = _client(engine, {"input": REDACT})
    image = "data:image/png;base64,iVBORw0KGgo4111111111111111AAAA"  # Luhn-valid digits inside base64
    tool = {**TOOL, "function": {**TOOL["function"], "description": f"Customer {RRN}."}}
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "name": f"kim-{RRN}",
                "content": [{"type": "image_url", "image_url": {"url": image}}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [_whole_call(json.dumps({"card": CARD}), "lookup")],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": "done"},
        ],
        "tools": [tool],
        "chat_template_kwargs": {"customer": f"rrn {RRN}"},
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    sent = engine.calls[0][1]
    assert sent.messages[0]["name"] == "kim-[REDACTED:kr_rrn]"
    assert sent.messages[0]["content"][0]["image_url"]["url"] == image  # not text: never rewritten
    assert json.loads(sent.messages[1]["tool_calls"][0]["function"]["arguments"]) == {
        "card": "[REDACTED:credit_card]"
    }
    assert sent.tools[0].function.description == "Customer [REDACTED:kr_rrn]."
    assert sent.chat_template_kwargs == {"customer": "rrn [REDACTED:kr_rrn]"}


def test_token_id_prompts_are_decoded_with_the_models_tokenizer_and_checked(counter: TokenCounter) -> None:
    engine = FakeEngine([_answer({"content": "ok"})])
    client = _client(engine, {"input": {**REDACT, **BLOCK}}, counter=counter)
    ids = counter.encode(f"My number is {RRN}, thanks.")
    assert client.post("/v1/completions", json={"model": "m", "prompt": ids}).status_code == 200
    sent = engine.calls[0][1].prompt
    assert all(isinstance(i, int) for i in sent)
    assert counter.decode(sent) == "My number is [REDACTED:kr_rrn], thanks."
    # A batch of token-id prompts: each one is checked.
    batch = [counter.encode("fine"), counter.encode("this is Forbidden")]
    refused = client.post("/v1/completions", json={"model": "m", "prompt": batch})
    assert _refusal(refused)[:2] == (400, "content_policy_violation")
    assert len(engine.calls) == 1


def test_token_id_prompts_the_guardrail_cannot_read_are_refused(counter: TokenCounter) -> None:
    engine = FakeEngine([_answer({"content": "ok"})])
    no_tokenizer = _client(engine, {"input": REDACT})
    refused = no_tokenizer.post("/v1/completions", json={"model": "m", "prompt": [1, 2, 3]})
    assert _refusal(refused) == (400, "unsupported_value", "prompt")
    with_tokenizer = _client(engine, {"input": REDACT}, counter=counter)
    outside = with_tokenizer.post("/v1/completions", json={"model": "m", "prompt": [1, 10**9]})
    assert _refusal(outside) == (400, "invalid_value", "prompt")
    assert engine.calls == []
    # Without input guardrails nothing needs to read them.
    unguarded = _client(engine, {})
    assert unguarded.post("/v1/completions", json={"model": "m", "prompt": [1, 2, 3]}).status_code == 200


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/completions", {"prompt": "hi", "prompt_embeds": "AAAA"}, "prompt_embeds"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "prompt_embeds", "data": "AAAA"}]}]},
            "messages[0].content",
        ),
    ],
)
def test_prompt_embeddings_are_refused_where_input_guardrails_apply(
    route: str, body: dict[str, Any], param: str
) -> None:
    engine = FakeEngine([_answer({"content": "ok"})])
    response = _client(engine, {"input": REDACT}).post(route, json={"model": "m", **body})
    assert _refusal(response) == (400, "unsupported_value", param)
    assert engine.calls == []


def test_completion_suffix_is_checked() -> None:
    engine = FakeEngine([_answer({"content": "ok"})])
    response = _client(engine, {"input": BLOCK}).post(
        "/v1/completions", json={"model": "m", "prompt": "hi", "suffix": "forbidden"}
    )
    assert _refusal(response)[:2] == (400, "content_policy_violation")


# -- output -----------------------------------------------------------------------


def test_whole_answer_tool_calls_and_reasoning_are_redacted_or_blocked() -> None:
    engine = FakeEngine(
        [
            _answer(
                {
                    "content": None,
                    "reasoning": f"The user's RRN is {RRN}.",
                    "tool_calls": [_whole_call(json.dumps({"card": CARD}), "lookup")],
                }
            )
        ]
    )
    client = _client(engine, {"output": REDACT})
    message = client.post("/v1/chat/completions", json={"model": "m", "messages": [ASKED]}).json()["choices"][
        0
    ]["message"]
    assert message["reasoning"] == "The user's RRN is [REDACTED:kr_rrn]."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"card": "[REDACTED:credit_card]"}
    blocking = FakeEngine(
        [_answer({"content": None, "tool_calls": [_whole_call('{"q": "forbidden"}', "lookup")]})]
    )
    refused = _client(blocking, {"output": BLOCK}).post(
        "/v1/chat/completions", json={"model": "m", "messages": [ASKED]}
    )
    assert _refusal(refused)[:2] == (400, "content_policy_violation")


def _streamed_text(response: Any) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Each delta field as the client reassembles it (tool-call arguments per call), and the error events."""
    fields: dict[str, str] = {}
    errors = []
    for line in response.text.splitlines():
        data = line.removeprefix("data: ")
        if not line or data == "[DONE]":
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            errors.append(chunk["error"])
            continue
        for choice in chunk["choices"]:
            delta = choice["delta"]
            for name in ("content", "reasoning", "reasoning_content"):
                fields[name] = fields.get(name, "") + (delta.get(name) or "")
            for call in delta.get("tool_calls") or []:
                key = f"tool_calls[{call['index']}]"
                fields[key] = fields.get(key, "") + (call.get("function", {}).get("arguments") or "")
    return fields, errors


@pytest.mark.parametrize("reasoning", ["reasoning", "reasoning_content"])
def test_streamed_tool_call_arguments_and_reasoning_are_redacted_across_chunks(
    reasoning: str, db: Database, tmp_path: Path
) -> None:
    engine = FakeEngine(
        [
            [_event({"role": "assistant", reasoning: "Their RRN is 9001"})],
            [_event({reasoning: "01-1234567; I will look it up."})],
            [_event({"tool_calls": [_call('{"card": "4111 1111', "lookup")]})],
            [_event({"tool_calls": [_call(' 1111 1111"}')]})],
            [_event({"tool_calls": [_call('{"rrn": "900101-', "lookup", index=1)]})],
            [_event({"tool_calls": [_call('1234567"}', index=1)]}), _event({}, finish="tool_calls")],
            [f"data: {json.dumps({'choices': [], 'usage': USAGE})}\n\n", "data: [DONE]\n\n"],
        ]
    )
    client = _client(engine, {"output": REDACT}, db=db, tmp_path=tmp_path)
    response = client.post("/v1/chat/completions", json={"model": "m", "messages": [ASKED], "stream": True})
    fields, errors = _streamed_text(response)
    assert errors == []
    assert fields[reasoning] == "Their RRN is [REDACTED:kr_rrn]; I will look it up."
    assert json.loads(fields["tool_calls[0]"]) == {"card": "[REDACTED:credit_card]"}
    assert json.loads(fields["tool_calls[1]"]) == {"rrn": "[REDACTED:kr_rrn]"}
    assert RRN not in response.text and "1111 1111" not in response.text
    (row,) = _wait_for_audit(db, 1)
    assert {(v["kind"], v["count"]) for v in row["guardrails"]} == {("kr_rrn", 2), ("credit_card", 1)}


def test_streamed_tool_call_arguments_that_match_a_blocklist_end_the_stream() -> None:
    engine = FakeEngine(
        [
            [_event({"role": "assistant", "tool_calls": [_call('{"q": "forb', "lookup")]})],
            [_event({"tool_calls": [_call('idden"}')]})],
            [_event({}, finish="tool_calls"), "data: [DONE]\n\n"],
        ]
    )
    client = _client(engine, {"output": BLOCK})
    response = client.post("/v1/chat/completions", json={"model": "m", "messages": [ASKED], "stream": True})
    fields, errors = _streamed_text(response)
    assert [e["code"] for e in errors] == ["content_policy_violation"]
    assert "forbidden" not in fields.get("tool_calls[0]", "")
    assert engine.streams[0].cancelled


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [ASKED], "return_token_ids": True}, "return_token_ids"),
        ("/v1/completions", {"prompt": "hi", "return_token_ids": True}, "return_token_ids"),
        ("/v1/completions", {"prompt": "hi", "logprobs": 0}, "logprobs"),  # 0: the sampled tokens' text
    ],
)
def test_token_ids_and_logprobs_that_would_carry_the_raw_answer_are_refused(
    route: str, body: dict[str, Any], param: str
) -> None:
    engine = FakeEngine([_answer({"content": "ok"})])
    response = _client(engine, {"output": REDACT}).post(route, json={"model": "m", **body})
    assert _refusal(response)[0::2] == (400, param)
    assert engine.calls == []


# -- audit ------------------------------------------------------------------------


def _wait_for_audit(db: Database, n: int, timeout_s: float = 5) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = AuditStore(db).query_audit(limit=1000)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"expected {n} audit rows, found {len(AuditStore(db).query_audit(limit=1000))}")


def test_recorded_prompt_is_the_body_after_redaction(db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer({"content": "ok"})])
    client = _client(engine, {"input": REDACT}, db=db, tmp_path=tmp_path)
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": f"My RRN is {RRN} and my card {CARD}."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [_whole_call(json.dumps({"rrn": RRN}), "lookup")],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": "done"},
        ],
        "temperature": 0,
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    (row,) = _wait_for_audit(db, 1)
    assert RRN not in row["body"] and CARD not in row["body"] and "1234567" not in row["body"]
    recorded = json.loads(row["body"])
    assert (
        recorded["messages"][0]["content"]
        == "My RRN is [REDACTED:kr_rrn] and my card [REDACTED:credit_card]."
    )
    assert recorded["temperature"] == 0 and recorded["model"] == "m"
