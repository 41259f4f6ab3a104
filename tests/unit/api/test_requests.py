import json
import pickle

import pytest

from welip.api import OpenAIError, parse_chat, parse_completion, parse_embedding
from welip.api._requests import MAX_EMBEDDING_INPUTS


def _chat(**overrides: object) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return json.dumps(body).encode()


def _error(raw: bytes, parse=parse_chat) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        parse(raw)
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def test_valid_chat_request_crosses_a_process_boundary() -> None:
    request = parse_chat(_chat(max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert request.model == "m"
    assert request.max_tokens == 8
    assert request.stream_options.include_usage is True
    # The request is pickled to the engine replica; pydantic iterators would fail here.
    assert pickle.loads(pickle.dumps(request)).messages == [{"role": "user", "content": "hi"}]


def test_multipart_content_survives_pickling() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    request = parse_chat(_chat(messages=[{"role": "user", "content": content}]))
    assert pickle.loads(pickle.dumps(request)).messages[0]["content"] == content


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_type"),
        (
            json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
            "model",
            "missing_required_parameter",
        ),
        (_chat(model=7), "model", "invalid_type"),
        (_chat(messages=[]), "messages", "invalid_type"),
        (_chat(messages="hello"), "messages", "invalid_type"),
        (_chat(messages=["hello"]), "messages[0]", "invalid_type"),
        (_chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", "invalid_value"),
        (_chat(messages=[{"content": "x"}]), "messages[0].role", "invalid_value"),
        (_chat(max_tokens=0), "max_tokens", "invalid_value"),
        (_chat(max_tokens=-5), "max_tokens", "invalid_value"),
        (_chat(max_tokens="12"), "max_tokens", "invalid_type"),
        (_chat(max_tokens=True), "max_tokens", "invalid_type"),
        (_chat(max_completion_tokens=0), "max_completion_tokens", "invalid_value"),
        (_chat(n=0), "n", "invalid_value"),
        (_chat(temperature="hot"), "temperature", "invalid_type"),
    ],
)
def test_bad_chat_requests_name_the_field(raw: bytes, param: str | None, code: str) -> None:
    error = _error(raw)
    assert error.param == param
    assert error.code == code
    assert error.body()["error"]["message"]


def test_completion_request_with_echo_and_logprobs() -> None:
    raw = json.dumps({"model": "m", "prompt": "Paris is", "echo": True, "logprobs": 2, "max_tokens": 1})
    request = parse_completion(raw.encode())
    assert request.echo is True
    assert request.logprobs == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": ""}, "prompt"),
        ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x"}, "model"),
    ],
)
def test_bad_completion_requests(body: dict, param: str) -> None:
    assert _error(json.dumps(body).encode(), parse_completion).param == param


def _embedding(**overrides: object) -> bytes:
    body: dict[str, object] = {"model": "e", "input": ["a", "b"]}
    body.update(overrides)
    return json.dumps(body).encode()


def test_embedding_request_takes_one_text_or_many_and_defaults_to_floats() -> None:
    one = parse_embedding(_embedding(input="just one"))
    assert (one.input, one.encoding_format, one.dimensions) == (["just one"], "float", None)
    many = parse_embedding(_embedding(encoding_format="base64", dimensions=384, user="u-1"))
    assert (many.input, many.encoding_format, many.dimensions, many.user) == (
        ["a", "b"],
        "base64",
        384,
        "u-1",
    )


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (_embedding(model=None), "model", "missing_required_parameter"),
        (_embedding(input=None), "input", "missing_required_parameter"),
        (_embedding(input=[]), "input", "invalid_value"),
        (_embedding(input=""), "input", "invalid_value"),
        (_embedding(input=["ok", ""]), "input", "invalid_value"),
        (_embedding(input={"text": "x"}), "input", "invalid_type"),
        (_embedding(input=["ok", None]), "input", "invalid_type"),
        (_embedding(input=["x"] * (MAX_EMBEDDING_INPUTS + 1)), "input", "invalid_value"),
        (_embedding(input=[101, 2023, 102]), "input", "unsupported_value"),
        (_embedding(input=[[101, 2023, 102]]), "input", "unsupported_value"),
        (_embedding(encoding_format="int8"), "encoding_format", "invalid_value"),
        (_embedding(dimensions="384"), "dimensions", "invalid_type"),
        (_embedding(dimensions=0), "dimensions", "invalid_value"),
    ],
)
def test_bad_embedding_requests_name_the_field(raw: bytes, param: str | None, code: str) -> None:
    error = _error(raw, parse_embedding)
    assert (error.param, error.code) == (param, code)


def test_token_id_input_is_refused_with_a_way_out_for_langchain() -> None:
    error = _error(_embedding(input=[[1, 2, 3]]), parse_embedding)
    assert "check_embedding_ctx_length=False" in error.message


@pytest.mark.parametrize(
    ("parse", "body", "param"),
    [
        # Found by tests/unit/gateway/test_schemathesis.py (a 500): vLLM's model validators
        # raise its own VLLMValidationError, which pydantic lets through.
        (parse_completion, {"model": "m", "prompt": "x", "logprobs": -2}, "logprobs"),
        (parse_completion, {"model": "m", "prompt": "x", "prompt_logprobs": -2}, "prompt_logprobs"),
        (
            parse_chat,
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": -2},
            "top_logprobs",
        ),
    ],
)
def test_what_vllms_own_validators_refuse_is_a_400_naming_the_field(
    parse: object, body: dict[str, object], param: str
) -> None:
    error = _error(json.dumps(body).encode(), parse)  # type: ignore[arg-type]
    assert (error.code, error.param) == ("invalid_value", param)
    assert error.message.startswith(f"`{param}` must be")


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        # Found by tests/unit/gateway/test_schemathesis.py (a 500): vLLM's validators read
        # the raw body before pydantic checks types, and fail on a field of the wrong type.
        (parse_completion, {"model": "m", "prompt": "x", "structured_outputs": []}),
        (
            parse_chat,
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "structured_outputs": [1]},
        ),
    ],
)
def test_a_field_of_the_wrong_type_that_vllms_validators_trip_on_is_a_400(
    parse: object, body: dict[str, object]
) -> None:
    error = _error(json.dumps(body).encode(), parse)  # type: ignore[arg-type]
    assert error.code == "invalid_type" and error.message
