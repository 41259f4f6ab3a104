"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Codes are strings (``model_not_found``, ``context_length_exceeded``, ...), never the
HTTP status as an integer, so clients that switch on ``error.code`` work.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.responses import JSONResponse

# vLLM words it "This model's maximum context length is N tokens" or, for a prompt
# alone, "... longer than the maximum model length"; both mean the same to a client.
_CONTEXT_LENGTH = re.compile(r"maximum context length|maximum model length|context length", re.I)


class OpenAIError(Exception):
    """An error a client sees as an OpenAI error body with an HTTP status.

    Attributes:
        status_code: HTTP status.
        message: Human-readable explanation.
        type: OpenAI error type (``invalid_request_error``, ``server_error`` ...).
        code: Machine-readable string code.
        param: The request field at fault, if one is.
        headers: Extra response headers (``Retry-After`` ...).
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body, as OpenAI sends it."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_response(self) -> JSONResponse:
        """A FastAPI response carrying this error."""
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)

    def to_sse(self) -> str:
        """The error as one SSE event, for failures after the stream has begun."""
        return f"data: {json.dumps(self.body())}\n\n"


def invalid_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> OpenAIError:
    """400 ``invalid_request_error``."""
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    """404 ``model_not_found``, as OpenAI answers an unknown model."""
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def from_engine_error(message: str, status_code: int | None, engine_type: str | None) -> OpenAIError:
    """Map an error the vLLM engine returned to the OpenAI shape.

    vLLM answers with an integer ``code`` and its exception class as ``type``;
    clients expect an OpenAI ``type`` and a string ``code``.
    """
    status = status_code if isinstance(status_code, int) and 400 <= status_code < 600 else 500
    if status == 400 and _CONTEXT_LENGTH.search(message):
        return OpenAIError(400, message, param="messages", code="context_length_exceeded")
    if status == 404:
        return OpenAIError(404, message, code="not_found")
    if status < 500:
        return OpenAIError(status, message, code="invalid_value")
    return OpenAIError(
        status,
        f"The engine failed to handle the request ({engine_type or 'error'}): {message}",
        type="server_error",
        code="engine_error",
    )
