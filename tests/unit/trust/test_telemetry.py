"""The labels of the trust layer's metrics stay a small, bounded set."""

from __future__ import annotations

import pytest

from welip.trust import Principal
from welip.trust._auth import ANONYMOUS
from welip.trust._telemetry import metric_key_id, rejection_reason


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (401, "invalid_api_key", "auth"),
        (403, "permission_denied", "permission"),
        (429, "rate_limit_exceeded", "rate_limit"),
        (400, "content_policy_violation", "guardrail"),
        (503, "model_overloaded", "backpressure"),
        (503, "rate_limiter_unavailable", "backpressure"),
        (404, "model_not_found", "not_found"),
        (400, "invalid_json", "invalid_request"),
        (504, "timeout", "engine"),
    ],
)
def test_rejection_reasons_are_a_small_fixed_set(status: int, code: str, reason: str) -> None:
    assert rejection_reason(status, code) == reason


def test_metric_key_label_is_bounded_for_oidc_callers() -> None:
    oidc = Principal(id="oidc:alice", kind="oidc", role="user", permissions=frozenset(), models=None)
    key = Principal(
        id="key_1", kind="api_key", role="user", permissions=frozenset(), models=None, key_id="key_1"
    )
    assert (metric_key_id(oidc), metric_key_id(key), metric_key_id(ANONYMOUS)) == (
        "oidc:user",
        "key_1",
        "anonymous",
    )
