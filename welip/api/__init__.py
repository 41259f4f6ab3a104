"""The OpenAI-compatible API surface: request checks, error bodies, SSE framing."""

from welip.api._errors import OpenAIError, from_engine_error, invalid_request, model_not_found
from welip.api._handlers import OnError, add_error_handlers
from welip.api._json import MAX_JSON_DEPTH, load_json
from welip.api._requests import (
    CHAT_ROLES,
    EmbeddingRequest,
    parse_chat,
    parse_completion,
    parse_embedding,
    request_schemas,
)
from welip.api._sse import DONE, engine_error, sse_events, sse_frame

__all__ = [
    "CHAT_ROLES",
    "DONE",
    "MAX_JSON_DEPTH",
    "EmbeddingRequest",
    "OnError",
    "OpenAIError",
    "add_error_handlers",
    "engine_error",
    "from_engine_error",
    "invalid_request",
    "load_json",
    "model_not_found",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
    "request_schemas",
    "sse_events",
    "sse_frame",
]
