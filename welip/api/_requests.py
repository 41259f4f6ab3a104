"""Parse and check OpenAI requests before they reach an engine.

The request models are vLLM's own (re-exported by ``ray.serve.llm``), so the
engine sees exactly what ``vllm serve`` would. WeLIP adds the checks vLLM leaves to
the engine or skips: unknown roles, non-positive token counts, OpenAI's upper bounds
(``n``, ``best_of``, embedding inputs), wrong JSON types, all answered with a 400
before any streamed byte.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray.serve.llm.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
)

from welip._compat.vllm import VLLMClientError
from welip.api._errors import OpenAIError, invalid_request
from welip.api._json import load_json

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_POSITIVE_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "best_of")
MAX_N = 128  # OpenAI's bound on `n`; admission applies the gateway's own (limits.max_choices_per_request)
MAX_BEST_OF = 20  # OpenAI's bound on the legacy completions' `best_of`
# Upper bounds checked while parsing; `max_tokens` is bounded by the model's context at admission.
_MOST = {"n": MAX_N, "best_of": MAX_BEST_OF}
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bound on `input` items
# OpenAI takes at most 8192 tokens per input; as many characters as that in English text
# at four per token. The embedding model reads far fewer (it truncates): a longer input is
# only work for the tokenizer, on the gateway's event loop.
MAX_EMBEDDING_INPUT_CHARS = 32_768

_Request = TypeVar("_Request", bound=BaseModel)

__all__ = [
    "CHAT_ROLES",
    "MAX_BEST_OF",
    "MAX_EMBEDDING_INPUTS",
    "MAX_EMBEDDING_INPUT_CHARS",
    "MAX_N",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
    "request_schemas",
]


class EmbeddingRequest(BaseModel):
    """A ``/v1/embeddings`` body, OpenAI's shape; ``input`` is always a list of texts once parsed."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="The embedding model's id.")
    input: list[str] = Field(
        min_length=1,
        max_length=MAX_EMBEDDING_INPUTS,
        description="Text, or array of texts, to embed; each non-empty. Token-id arrays are not accepted.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`float` arrays, or `base64` of little-endian float32 bytes."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Must equal the model's dimension if given (no shortening)."
    )
    user: str | None = Field(None, description="An end-user id, for the caller's own tracking.")


def parse_chat(raw: bytes) -> ChatCompletionRequest:
    """Validate a ``/v1/chat/completions`` body.

    Raises:
        OpenAIError: 400 ``invalid_request_error`` naming the offending field.
    """
    payload = _load_object(raw)
    _require_model(payload)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request(
            "`messages` must be a non-empty array of message objects.",
            param="messages",
            code="invalid_type" if messages is not None else "missing_required_parameter",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_request(
                f"messages[{i}] must be an object.", param=f"messages[{i}]", code="invalid_type"
            )
        role = message.get("role")
        if role not in CHAT_ROLES:
            allowed = ", ".join(sorted(CHAT_ROLES))
            raise invalid_request(
                f"messages[{i}].role {role!r} is not one of: {allowed}.",
                param=f"messages[{i}].role",
            )
    _check_positive_ints(payload)
    request = _validate(ChatCompletionRequest, payload)
    # Pydantic turns `Iterable[...]` message fields into one-shot iterators that
    # cannot be pickled across the Ray handle; the checked JSON lists can.
    request.messages = messages
    return request


def parse_completion(raw: bytes) -> CompletionRequest:
    """Validate a ``/v1/completions`` body.

    Raises:
        OpenAIError: 400 ``invalid_request_error`` naming the offending field.
    """
    payload = _load_object(raw)
    _require_model(payload)
    prompt = payload.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise invalid_request(
            "`prompt` is required and must not be empty.",
            param="prompt",
            code="missing_required_parameter",
        )
    _check_positive_ints(payload)
    return _validate(CompletionRequest, payload)


def parse_embedding(raw: bytes) -> EmbeddingRequest:
    """Validate a ``/v1/embeddings`` body; a single string becomes a one-item ``input``.

    Raises:
        OpenAIError: 400 ``invalid_request_error`` naming the offending field; token-id
            input is refused (``unsupported_value``): the tokens would be another model's.
    """
    payload = _load_object(raw)
    _require_model(payload)
    texts = payload.get("input")
    if texts is None:
        raise invalid_request("`input` is required.", param="input", code="missing_required_parameter")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list):
        raise invalid_request(
            "`input` must be a string or an array of strings.", param="input", code="invalid_type"
        )
    if not texts:
        raise invalid_request("`input` must not be an empty array.", param="input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise invalid_request(
            f"`input` has {len(texts)} items; at most {MAX_EMBEDDING_INPUTS} are allowed per request.",
            param="input",
        )
    for i, text in enumerate(texts):
        if isinstance(text, int | list) and not isinstance(text, bool):
            raise invalid_request(
                "`input` as token ids is not supported: this server tokenizes with the embedding "
                "model's own tokenizer, so send the text. (LangChain's OpenAIEmbeddings sends "
                "token ids unless created with check_embedding_ctx_length=False.)",
                param="input",
                code="unsupported_value",
            )
        if not isinstance(text, str):
            raise invalid_request(f"input[{i}] must be a string.", param="input", code="invalid_type")
        if not text:
            raise invalid_request(
                f"input[{i}] is an empty string; every input must have text.", param="input"
            )
        if len(text) > MAX_EMBEDDING_INPUT_CHARS:
            raise invalid_request(
                f"input[{i}] has {len(text)} characters; each input may have at most "
                f"{MAX_EMBEDDING_INPUT_CHARS}. Split longer texts into chunks.",
                param="input",
            )
    encoding = payload.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise invalid_request(
            f"`encoding_format` must be `float` or `base64`, got {encoding!r}.", param="encoding_format"
        )
    dimensions = payload.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
        raise invalid_request("`dimensions` must be an integer.", param="dimensions", code="invalid_type")
    request = _validate(EmbeddingRequest, {**payload, "input": texts, "encoding_format": encoding or "float"})
    return request


def request_schemas(ref_template: str) -> dict[str, dict[str, Any]]:
    """JSON schemas of the bodies :func:`parse_chat`, :func:`parse_completion`, :func:`parse_embedding` take.

    vLLM's request models leave to the engine, or do not state, what the checks above
    refuse; the schemas say it too, so a client generated from the OpenAPI spec sends
    what the gateway takes: ``model`` required, a non-empty ``messages`` or ``prompt``,
    a known role on every message, positive token counts and choices within OpenAI's
    bounds. Bounds that depend on the served model or the gateway's configuration
    (``max_tokens`` within the context, ``limits.max_choices_per_request``) are not
    in them.

    Args:
        ref_template: How a schema refers to another (``#/components/schemas/{model}``).

    Returns:
        Each request model's schema by name, and every schema they refer to.
    """
    schemas: dict[str, dict[str, Any]] = {}
    for model in (ChatCompletionRequest, CompletionRequest, EmbeddingRequest):
        schema = model.model_json_schema(ref_template=ref_template)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        schema = schemas[name]
        properties = schema["properties"]
        properties["model"] = {"type": "string", "minLength": 1, "title": "Model"}
        for field in _POSITIVE_INT_FIELDS:
            if field in properties:
                bounds = {
                    "type": "integer",
                    "minimum": 1,
                    **({"maximum": _MOST[field]} if field in _MOST else {}),
                }
                properties[field] = {
                    "anyOf": [bounds, {"type": "null"}],
                    "title": properties[field].get("title"),
                }
        required = {"model", "messages" if name == "ChatCompletionRequest" else "prompt"}
        schema["required"] = sorted(required | set(schema.get("required", [])))
    chat = schemas["ChatCompletionRequest"]["properties"]
    chat["messages"]["minItems"] = 1
    # Messages of vLLM's own shape take any role string; the gateway takes OpenAI's roles.
    schemas["CustomChatCompletionMessageParam"]["properties"]["role"] = {
        "enum": sorted(CHAT_ROLES),
        "title": "Role",
        "type": "string",
    }
    prompt = schemas["CompletionRequest"]["properties"]["prompt"]
    non_empty = [
        {**option, **({"minLength": 1} if option.get("type") == "string" else {"minItems": 1})}
        for option in prompt["anyOf"]
        if option.get("type") != "null"
    ]
    schemas["CompletionRequest"]["properties"]["prompt"] = {"anyOf": non_empty, "title": "Prompt"}
    return schemas


def _load_object(raw: bytes) -> dict[str, Any]:
    payload = load_json(raw)
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_type")
    return payload


def _require_model(payload: dict[str, Any]) -> None:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request(
            "`model` is required and must be a string.",
            param="model",
            code="missing_required_parameter" if model is None else "invalid_type",
        )


def _check_positive_ints(payload: dict[str, Any]) -> None:
    for field in _POSITIVE_INT_FIELDS:
        value = payload.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_request(f"`{field}` must be an integer.", param=field, code="invalid_type")
        if value < 1:
            raise invalid_request(f"`{field}` must be at least 1, got {value}.", param=field)
        most = _MOST.get(field)
        if most is not None and value > most:
            raise invalid_request(f"`{field}` must be at most {most}, got {value}.", param=field)


def _validate(model: type[_Request], payload: dict[str, Any]) -> _Request:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    except VLLMClientError as exc:  # vLLM's model validators: not a ValueError, so not wrapped by pydantic
        message = str(exc.args[0]) if exc.args else type(exc).__name__
        raise invalid_request(message, param=getattr(exc, "parameter", None)) from None
    except ValueError as exc:  # vLLM's model validators raise plain ValueError
        raise invalid_request(str(exc)) from None
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        # vLLM's "before" validators read the raw body before pydantic checks its types:
        # a field of the wrong type (`structured_outputs: []`) trips them up.
        raise invalid_request(
            f"A field of the request has the wrong type ({type(exc).__name__}: {exc}).", code="invalid_type"
        ) from None


def _from_validation_error(exc: ValidationError) -> OpenAIError:
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    kind = first["type"]
    code = "invalid_type" if kind.endswith("_type") or "parsing" in kind else "invalid_value"
    if kind == "missing":
        code = "missing_required_parameter"
    message = first["msg"] if not param else f"{param}: {first['msg']}"
    return invalid_request(message, param=param, code=code)
