import json

import pytest

from welip.api import OpenAIError, from_engine_error, model_not_found


def test_error_body_has_exactly_the_openai_keys() -> None:
    body = OpenAIError(400, "bad", code="invalid_value", param="x").body()
    assert body == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "x", "code": "invalid_value"}
    }


def test_model_not_found_is_a_404_with_a_string_code() -> None:
    error = model_not_found("gpt-5")
    assert (error.status_code, error.code, error.param) == (404, "model_not_found", "model")
    assert "gpt-5" in error.message


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 2048 tokens. However, your prompt contains 2049 tokens",
        "The prompt (total length 9000) is longer than the maximum model length of 2048.",
    ],
)
def test_context_overflow_maps_to_context_length_exceeded(message: str) -> None:
    error = from_engine_error(message, 400, "BadRequestError")
    assert (error.status_code, error.type, error.code) == (
        400,
        "invalid_request_error",
        "context_length_exceeded",
    )


def test_engine_client_errors_keep_their_status_with_a_string_code() -> None:
    error = from_engine_error("temperature must be non-negative", 400, "BadRequestError")
    assert (error.status_code, error.code) == (400, "invalid_value")
    assert isinstance(error.body()["error"]["code"], str)


@pytest.mark.parametrize("status", [500, None, 0, 999])
def test_engine_failures_are_server_errors(status: int | None) -> None:
    error = from_engine_error("boom", status, "EngineDeadError")
    assert error.status_code == 500
    assert (error.type, error.code) == ("server_error", "engine_error")


def test_error_as_sse_event_is_parseable() -> None:
    event = OpenAIError(504, "slow", type="server_error", code="timeout").to_sse()
    assert event.startswith("data: ") and event.endswith("\n\n")
    assert json.loads(event.removeprefix("data: "))["error"]["code"] == "timeout"
