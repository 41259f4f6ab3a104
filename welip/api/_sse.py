"""Server-sent events framing of OpenAI streams.

Engine replicas send batches of ready-made ``data: {...}\\n\\n`` strings (Ray Serve
LLM gathers tokens for a few milliseconds into one message); the gateway forwards
each batch as one write and guarantees exactly one ``data: [DONE]`` at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from welip.api._errors import OpenAIError, from_engine_error

DONE = "data: [DONE]\n\n"


def engine_error(item: Any) -> OpenAIError | None:
    """The OpenAI error an engine item stands for, or None if it is not an error."""
    error = getattr(item, "error", None)
    if error is None or not hasattr(error, "message"):
        return None
    return from_engine_error(error.message, getattr(error, "code", None), getattr(error, "type", None))


def sse_frame(item: Any) -> str:
    """One engine item (a string, a batch of them, a model or an error) as SSE text."""
    if isinstance(item, str):
        return item
    if isinstance(item, list | tuple):
        return "".join(sse_frame(part) for part in item)
    error = engine_error(item)
    if error is not None:
        return error.to_sse()
    return f"data: {item.model_dump_json()}\n\n"


async def sse_events(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[str]:
    """Frame ``first`` and then ``rest``; end with a single ``data: [DONE]``."""
    done = False
    async for item in _chain([first], rest):
        text = sse_frame(item)
        if text.endswith(DONE):
            done = True
        if text:
            yield text
    if not done:
        yield DONE


async def _chain(head: Iterable[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for item in head:
        yield item
    async for item in rest:
        yield item
