"""Upper bounds the OpenAI API itself sets, checked while parsing: `n`, `best_of`, embedding inputs.

The model-dependent bounds (``max_tokens`` against the model's context, the configured
``limits.max_choices_per_request``) are admission's: ``tests/unit/trust/test_accounting.py``.
"""

from __future__ import annotations

import json

import pytest

from welip.api import OpenAIError, parse_chat, parse_completion, parse_embedding

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}
# OpenAI's own bounds: `n` 128, `best_of` 20; an embedding input about its 8192 tokens in characters.
MAX_N, MAX_BEST_OF, MAX_EMBEDDING_INPUT_CHARS = 128, 20, 32_768


def _refused(parse, body: dict[str, object]) -> OpenAIError:  # type: ignore[no-untyped-def]
    with pytest.raises(OpenAIError) as info:
        parse(json.dumps(body).encode())
    error = info.value
    assert (error.status_code, error.type) == (400, "invalid_request_error")
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("parse", [parse_chat, parse_completion])
@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("n", MAX_N + 1, "invalid_value"),
        ("n", 10**30, "invalid_value"),
        ("best_of", MAX_BEST_OF + 1, "invalid_value"),
        ("best_of", 0, "invalid_value"),
        ("best_of", "3", "invalid_type"),
        ("best_of", 2.5, "invalid_type"),
    ],
)
def test_choices_beyond_openais_bounds_are_refused(parse, field: str, value: object, code: str) -> None:  # type: ignore[no-untyped-def]
    body = CHAT if parse is parse_chat else COMPLETION
    error = _refused(parse, {**body, field: value})
    assert (error.param, error.code) == (field, code)


def test_choices_at_the_bounds_parse() -> None:
    assert parse_chat(json.dumps({**CHAT, "n": MAX_N}).encode()).n == MAX_N
    assert parse_completion(json.dumps({**COMPLETION, "n": 2, "best_of": MAX_BEST_OF}).encode()).n == 2


def test_an_embedding_input_over_the_size_bound_is_refused_by_index() -> None:
    body = {"model": "e", "input": ["ok", "x" * (MAX_EMBEDDING_INPUT_CHARS + 1)]}
    error = _refused(parse_embedding, body)
    assert (error.param, error.code) == ("input", "invalid_value")
    assert "input[1]" in error.message
    at_bound = {"model": "e", "input": ["x" * MAX_EMBEDDING_INPUT_CHARS]}
    assert len(parse_embedding(json.dumps(at_bound).encode()).input[0]) == MAX_EMBEDDING_INPUT_CHARS
