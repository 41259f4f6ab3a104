"""The trust layer's config: its validators, as the trust config and as the gateway's that extends it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from welip.gateway import GatewayConfig
from welip.trust import TrustConfig


@pytest.mark.parametrize("config", [TrustConfig, GatewayConfig])
def test_config_refuses_roles_it_does_not_define(config: type[TrustConfig]) -> None:
    oidc = {"issuer": "i", "audience": "a", "jwks_url": "http://x", "role_mapping": {"g": "root"}}
    with pytest.raises(ValidationError, match="unknown roles: root"):
        config.model_validate({"auth": {"oidc": oidc}})
    with pytest.raises(ValidationError, match="exactly one of jwks_url or public_key_env"):
        config.model_validate({"auth": {"oidc": {"issuer": "i", "audience": "a"}}})
    with pytest.raises(ValidationError, match="by_role names unknown roles: ghost"):
        config.model_validate({"guardrails": {"by_role": {"ghost": {}}}})


@pytest.mark.parametrize("algorithm", ["none", "HS256", "HS384", "HS512", "rs256", "XX999"])
def test_oidc_accepts_no_symmetric_or_unsigned_algorithm(algorithm: str) -> None:
    oidc = {"issuer": "i", "audience": "a", "jwks_url": "http://x", "algorithms": ["RS256", algorithm]}
    with pytest.raises(ValidationError, match="algorithms"):
        TrustConfig.model_validate({"auth": {"oidc": oidc}})


def test_oidc_accepts_the_asymmetric_algorithms() -> None:
    algorithms = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
    oidc = {"issuer": "i", "audience": "a", "jwks_url": "http://x", "algorithms": algorithms}
    assert TrustConfig.model_validate({"auth": {"oidc": oidc}}).auth.oidc.algorithms == algorithms  # type: ignore[union-attr]


def test_request_bodies_are_bounded_by_default_and_the_bound_is_bounded() -> None:
    assert TrustConfig().limits.max_body_bytes == 4 * 1024 * 1024
    assert TrustConfig.model_validate({"limits": {"max_body_bytes": 1024}}).limits.max_body_bytes == 1024
    for out_of_bounds in (0, 1023, 2**30 + 1):
        with pytest.raises(ValidationError, match="max_body_bytes"):
            TrustConfig.model_validate({"limits": {"max_body_bytes": out_of_bounds}})
