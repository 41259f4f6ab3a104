"""Promotion: the request validated up front, refusals before any evaluation, the ungated switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from welip.serving import PromotionRefused, PromotionRequest, promote_candidate, set_alias_ungated
from welip.store import AuditStore, CatalogStore, Database

GATE = Path(__file__).resolve().parents[3] / "configs/eval/arithmetic.yaml"


def test_a_promotion_request_is_refused_before_anything_runs() -> None:
    with pytest.raises(PromotionRefused, match="METRIC OP current"):
        PromotionRequest.parse("faq-v2", alias="prod", gate=GATE, requirements=["token_f1 => current"])
    with pytest.raises(PromotionRefused, match="target must be an endpoint"):
        PromotionRequest.parse(
            "faq-v2",
            alias="prod",
            gate=GATE,
            requirements=["token_f1 >= 0.5"],
            overrides=["target={kind: batch, model: m, source: m}"],
        )
    request = PromotionRequest.parse(
        "faq-v2", alias="prod", gate=GATE, requirements=["token_f1 >= current"], overrides=["limit=5"]
    )
    assert request.endpoint.base_url == "http://127.0.0.1:8000/v1" and request.overrides == ("limit=5",)


def test_a_gate_that_would_mean_nothing_is_refused_before_any_evaluation(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/welip.db")
    db.upgrade()
    catalog, audit_log = CatalogStore(db), AuditStore(db)
    against_current = PromotionRequest.parse(
        "faq-v2", alias="prod", gate=GATE, requirements=["token_f1 >= current"]
    )
    with pytest.raises(PromotionRefused, match="alias prod does not exist yet"):
        promote_candidate(against_current, db=db)
    catalog.set_alias("prod", "faq-v2")
    with pytest.raises(PromotionRefused, match="prod already points at faq-v2"):
        promote_candidate(against_current, db=db)
    assert audit_log.query_audit() == []


def test_setting_an_alias_without_a_gate_is_audited_and_never_points_at_an_alias(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/welip.db")
    db.upgrade()
    catalog, audit_log = CatalogStore(db), AuditStore(db)
    set_alias_ungated(db, "prod", "faq-v1")
    row = set_alias_ungated(db, "prod", "faq-v2")
    assert (row.target, row.previous) == ("faq-v2", "faq-v1")
    with pytest.raises(PromotionRefused, match="prod is itself an alias"):
        set_alias_ungated(db, "staging", "prod")
    audits = audit_log.query_audit(model="prod")
    assert [(a["route"], a["principal_kind"], a["status"]) for a in audits] == [
        ("welip alias set", "cli", 200)
    ] * 2
    assert {json.loads(a["body"])["previous"] for a in audits} == {None, "faq-v1"}
    assert catalog.get_alias("staging") is None
