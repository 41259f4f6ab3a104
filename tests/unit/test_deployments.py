"""The Serve app graph that ``deployments.gateway:build_app`` builds (no cluster needed)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from deployments.gateway import build_app
from welip.gateway._deployments import _sources

MODELS = [
    {"model_id": "a", "source": "smollm2-135m-instruct"},
    {"model_id": "b", "source": "smollm2-135m-instruct", "engine_kwargs": {"max_model_len": 512}},
]


def _ingress(args: dict[str, Any]) -> Any:
    return build_app(args)._bound_deployment


def test_default_gateway_lives_in_the_first_engine_with_the_others_as_peers() -> None:
    ingress = _ingress({"models": MODELS})
    assert ingress.name == "EngineGateway:a"
    kwargs = ingress.init_kwargs
    assert [card.id for card in kwargs["model_cards"]] == ["a", "b"]
    assert [app._bound_deployment.name for app in kwargs["peers"].values()] == ["PreparedLLMServer:b"]


def test_standalone_gateway_holds_every_engine() -> None:
    ingress = _ingress({"models": MODELS, "gateway": {"placement": "standalone", "num_replicas": 2}})
    assert ingress.name == "WelipGateway"
    assert ingress.num_replicas == 2
    engines = ingress.init_kwargs["engines"]
    assert {name: app._bound_deployment.name for name, app in engines.items()} == {
        "a": "PreparedLLMServer:a",
        "b": "PreparedLLMServer:b",
    }


EMBEDDINGS = [{"model_id": "mini", "num_cpus": 0.25}]


def test_both_gateway_shapes_get_the_embedding_deployments_and_their_cards() -> None:
    for args, engines_key in (
        ({"models": MODELS, "embeddings": EMBEDDINGS}, "peers"),
        ({"models": MODELS, "embeddings": EMBEDDINGS, "gateway": {"placement": "standalone"}}, "engines"),
    ):
        kwargs = _ingress(args).init_kwargs
        embedder = kwargs["embedders"]["mini"]._bound_deployment
        assert embedder.name == "EmbeddingServer:mini"
        assert embedder.ray_actor_options["num_cpus"] == 0.25
        (card,) = kwargs["embedding_cards"]
        assert (card.id, card.owned_by, card.root) == ("mini", "welip", "mini")
        assert "mini" not in kwargs[engines_key]  # not an engine: never sent chat requests


def test_an_embedding_model_may_not_reuse_a_chat_models_id() -> None:
    with pytest.raises(ValidationError, match="duplicate model_id"):
        build_app({"models": MODELS, "embeddings": [{"model_id": "a"}]})


def test_model_cards_name_no_storage_location_but_keep_the_source_for_tokenizers() -> None:
    models = [
        {"model_id": "a", "source": "s3://welip-models/a/v3"},
        {"model_id": "b", "source": "/srv/models/b"},
    ]
    embeddings = [{"model_id": "mini", "source": "s3://welip-models/mini"}]
    kwargs = _ingress({"models": models, "embeddings": embeddings}).init_kwargs
    cards = kwargs["model_cards"] + kwargs["embedding_cards"]
    assert [card.public()["root"] for card in cards] == ["a", "b", "mini"]
    assert not any("welip-models" in str(card.public()) or "/srv" in str(card.public()) for card in cards)
    assert _sources(kwargs["model_cards"]) == {"a": "s3://welip-models/a/v3", "b": "/srv/models/b"}
    assert _sources(kwargs["embedding_cards"]) == {"mini": "s3://welip-models/mini"}
