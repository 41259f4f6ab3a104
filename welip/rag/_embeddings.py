"""Query embeddings through an OpenAI-compatible ``POST /embeddings`` (the WeLIP gateway)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import httpx

from welip.observability import inject_traceparent


class Embeddings(Protocol):
    """Anything that embeds texts asynchronously: :class:`GatewayEmbeddings`, or a fake in tests."""

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


class EmbeddingsError(RuntimeError):
    """The embeddings endpoint refused the request, failed, or could not be reached."""


class GatewayEmbeddings:
    """Async client of an OpenAI-compatible embeddings endpoint.

    Example::

        embeddings = GatewayEmbeddings("http://localhost:8000/v1", "all-minilm-l6-v2", api_key="wlp_...")
        [vector] = await embeddings.embed(["What is WeLIP?"])

    Each call opens its own connection pool, so one instance is safe to share between
    event loops (LangGraph runs nodes on whichever loop calls them).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        request_hooks: Sequence[Callable[[httpx.Request], Awaitable[None]]] = (),
    ) -> None:
        """
        Args:
            base_url: the API root, ``http://host:8000/v1``; requests go to ``{base_url}/embeddings``.
            model: the embedding model id the endpoint serves (the one that built the table).
            api_key: sent as ``Authorization: Bearer <api_key>`` when given.
            timeout_s: longest wait for one response.
            transport: an httpx transport to send through (tests pass ``httpx.MockTransport``).
            request_hooks: httpx request hooks run on each request, after the trace header's
                (the agents app's sends its run's caller token).
        """
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s
        self._transport = transport
        self._hooks = [inject_traceparent, *request_hooks]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in the order of ``texts``.

        Raises:
            EmbeddingsError: a non-200 answer (with the endpoint's error message and code),
                an answer of the wrong shape, or no answer at all.
        """
        if not texts:
            return []
        url = f"{self.base_url}/embeddings"
        try:
            async with httpx.AsyncClient(
                timeout=self._timeout_s,
                transport=self._transport,
                event_hooks={"request": self._hooks},  # the gateway joins the retriever's trace
            ) as client:
                response = await client.post(
                    url, json={"model": self.model, "input": texts}, headers=self._headers
                )
        except httpx.HTTPError as exc:
            raise EmbeddingsError(f"POST {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise EmbeddingsError(f"POST {url} (model {self.model!r}): {_describe(response)}")
        try:
            items = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = [[float(x) for x in item["embedding"]] for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingsError(f"POST {url}: unexpected answer ({exc!r}): {response.text[:200]}") from exc
        if len(vectors) != len(texts):
            raise EmbeddingsError(f"POST {url}: {len(vectors)} embeddings for {len(texts)} texts")
        return vectors


def _describe(response: httpx.Response) -> str:
    """``<status> <code>: <message>`` from an OpenAI error body, or the start of the body."""
    try:
        error: Any = response.json().get("error", {})
        return f"{response.status_code} {error.get('code')}: {error.get('message')}"
    except (ValueError, AttributeError):
        return f"{response.status_code}: {response.text[:200]}"
