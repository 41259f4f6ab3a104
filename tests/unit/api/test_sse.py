import asyncio
import json
from collections.abc import AsyncIterator

from ray.serve.llm.openai_api_models import ErrorResponse

from welip.api import DONE, sse_events, sse_frame


async def _collect(first: object, rest: list[object]) -> str:
    async def gen() -> AsyncIterator[object]:
        for item in rest:
            yield item

    return "".join([text async for text in sse_events(first, gen())])


def _chunk(content: str) -> str:
    return f"data: {json.dumps({'choices': [{'delta': {'content': content}}]})}\n\n"


def _events(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e]


def test_batches_are_flattened_in_order_and_end_with_one_done() -> None:
    text = asyncio.run(_collect([_chunk("a"), _chunk("b")], [[_chunk("c")], _chunk("d")]))
    events = _events(text)
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == ["a", "b", "c", "d"]
    assert events[-1] == "[DONE]"


def test_engine_done_is_not_duplicated() -> None:
    text = asyncio.run(_collect([_chunk("a")], [[_chunk("b"), DONE]]))
    assert text.count("[DONE]") == 1
    assert text.endswith(DONE)


def test_mid_stream_engine_error_becomes_an_openai_error_event() -> None:
    error = ErrorResponse(error={"message": "engine died", "type": "EngineDeadError", "code": 500})
    events = _events(asyncio.run(_collect([_chunk("a")], [[error]])))
    body = json.loads(events[1])
    assert body["error"]["type"] == "server_error"
    assert body["error"]["code"] == "engine_error"
    assert events[-1] == "[DONE]"


def test_frame_of_plain_string_is_unchanged() -> None:
    assert sse_frame(_chunk("x")) == _chunk("x")
