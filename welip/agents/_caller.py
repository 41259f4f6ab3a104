"""The caller of a run, carried to the gateway on every LLM and embeddings call the run makes.

A run's task sets :data:`caller_token` (a token the trust layer minted for the run's
caller, see :class:`~welip.agents.AgentRuntime`'s ``caller_token``); LangGraph runs the
graph's nodes in tasks that copy the run's context, and :func:`send_caller_token`, an
httpx request hook on the shared clients, sends the token of the run that makes the call.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

CALLER_TOKEN_HEADER = "x-welip-caller-token"  # nosec B105 # a header name, not a secret
"""The header the gateway reads a caller token from (``welip.trust``'s; a test keeps them equal)."""

caller_token: ContextVar[str | None] = ContextVar("welip_caller_token", default=None)
"""The current run's caller token, or None (the call is the service's own)."""


async def send_caller_token(request: Any) -> None:
    """httpx request hook: send the current run's caller token, if it has one."""
    token = caller_token.get()
    if token is not None:
        request.headers[CALLER_TOKEN_HEADER] = token
