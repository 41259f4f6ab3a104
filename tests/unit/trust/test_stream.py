"""The stream filter: the usage chunk reaches the client only when it asked for it; it is counted always."""

from __future__ import annotations

import asyncio
import json

import pytest

from welip.api import parse_chat
from welip.trust import RequestContext, Trust, TrustConfig
from welip.trust._auth import OPEN

USAGE = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}


def _events() -> str:
    """A content chunk, the final usage chunk and [DONE], as compact as the engine writes them."""
    content = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    usage = {"object": "chat.completion.chunk", "choices": [], "usage": USAGE}
    chunks = "".join(f"data: {json.dumps(c, separators=(',', ':'))}\n\n" for c in (content, usage))
    return chunks + "data: [DONE]\n\n"


@pytest.mark.parametrize("include_usage", [None, False, True])
def test_the_usage_chunk_is_stripped_only_when_the_client_did_not_ask_for_it(
    include_usage: bool | None,
) -> None:
    trust = Trust(TrustConfig(), database=None, redis=None)
    request: dict[str, object] = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    if include_usage is not None:
        request["stream_options"] = {"include_usage": include_usage}
    raw = json.dumps(request).encode()
    # As the middleware leaves it in an app with auth off.
    ctx = RequestContext(method="POST", route="/v1/chat/completions", request_id="r", principal=OPEN)
    admission = asyncio.run(trust.admit(ctx, parse_chat(raw), raw))
    asked = bool(include_usage)
    assert admission.force_usage is not asked  # the engine is asked for usage either way
    sent = trust.stream_filter(ctx)(_events())
    assert ('"usage"' in sent) is asked
    assert sent.count("data: ") == (3 if asked else 2) and sent.endswith("data: [DONE]\n\n")
    assert (ctx.prompt_tokens, ctx.completion_tokens) == (4, 6)  # counted whether sent or not


def test_without_a_usage_chunk_each_choice_chunk_the_engine_sent_counts_one_token() -> None:
    # As vLLM streams a chat with n=2: a role chunk per choice, then one chunk per token.
    role = [{"index": i, "delta": {"role": "assistant", "content": ""}} for i in (0, 1)]
    tokens = [{"index": i % 2, "delta": {"content": f"t{i}"}} for i in range(5)]
    last = {"index": 1, "delta": {"content": "."}, "finish_reason": "stop"}
    chunks = [{"object": "chat.completion.chunk", "choices": [c]} for c in [*role, *tokens, last]]
    text = "".join(f"data: {json.dumps(c, separators=(',', ':'))}\n\n" for c in chunks)
    ctx = RequestContext(method="POST", route="/v1/chat/completions", request_id="r")
    trust = Trust(TrustConfig(), database=None, redis=None)
    stream = trust.stream_filter(ctx)
    cut = text.index("\n\n", len(text) // 2) + 2  # two batches, as the engine sends them
    stream(text[:cut])
    stream(text[cut:])
    trust.settle(ctx)
    assert (ctx.prompt_tokens, ctx.completion_tokens) == (None, 6)
    # A completion's chunks (`text`, no role) count the same way; a usage chunk, when it comes, wins.
    done = RequestContext(method="POST", route="/v1/completions", request_id="s")
    completion = "".join(
        f"data: {json.dumps({'choices': [{'index': 0, 'text': w}]})}\n\n" for w in ("a", "b", "c")
    )
    trust.stream_filter(done)(completion + _events())
    trust.settle(done)
    assert (done.prompt_tokens, done.completion_tokens) == (4, 6)
