"""The trust layer's filter over a streamed answer, applied to each batch of SSE events on its way out."""

from __future__ import annotations

import json
import re

from welip.trust._context import RequestContext
from welip.trust._guardrails import StreamGuard

_USAGE_MARK = '"usage":{'
# A chunk that carries a choice. Quotes inside JSON strings are escaped, so only a key matches.
_CHOICE_CHUNK = re.compile(r'"choices"\s*:\s*\[\s*\{')
# The opening chunk of a chat choice: the assistant's role and no token yet.
_ROLE_CHUNK = re.compile(r'"delta"\s*:\s*\{\s*"role"')


class StreamFilter:
    """Watches one SSE stream for the trust layer: output guardrail, usage.

    Called with each batch of SSE events of the answer, it returns what may be sent: the
    text the output guardrail passed (and an error event once it blocks), without the
    usage chunk the engine was asked for on the trust layer's behalf. The usage the
    engine reports becomes the request's; until it comes, the engine's chunks are
    counted (one token per choice chunk, as vLLM streams by default), so a stream that
    ends before its usage chunk (the client left, the output guardrail cut it) is still
    charged for what was generated. Without a request context (an app built without
    the trust middleware) it passes everything through.
    """

    def __init__(
        self,
        ctx: RequestContext | None = None,
        guard: StreamGuard | None = None,
    ) -> None:
        self._ctx = ctx
        self._guard = guard

    @property
    def blocked(self) -> bool:
        """The output guardrail ended the stream: read no more of the engine's answer."""
        return self._guard is not None and self._guard.blocked

    def __call__(self, text: str) -> str:
        ctx = self._ctx
        if ctx is None:
            return text
        # What the engine generated, counted before the guardrail holds back or cuts any of it.
        ctx.streamed_tokens += len(_CHOICE_CHUNK.findall(text)) - len(_ROLE_CHUNK.findall(text))
        if self._guard is not None:
            text = self._guard.filter(text)
            if self._guard.blocked:
                ctx.error_code = "content_policy_violation"
        if _USAGE_MARK not in text:
            return text
        kept = []
        for event in text.split("\n\n"):
            if _USAGE_MARK in event and event.startswith("data: {"):
                chunk = json.loads(event[6:])
                ctx.count_usage(chunk.get("usage"))
                if ctx.strip_usage and not chunk.get("choices"):
                    continue
            if event:
                kept.append(event + "\n\n")
        return "".join(kept)
