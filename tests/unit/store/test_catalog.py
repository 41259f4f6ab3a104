"""The serving catalog: adapter versions and aliases as typed records."""

from __future__ import annotations

from typing import Any

from welip.store import CatalogStore, Database
from welip.store._schema import adapters, model_aliases


def test_adapters_and_aliases_come_back_as_records_with_their_json_view(database: Database) -> None:
    catalog = CatalogStore(database)
    spec: dict[str, Any] = dict(base_model_id="m", uri="/a", kind="sft", mlflow_run_id=None)
    first = catalog.register_adapter(name="faq", version=None, lineage={"commit": "c"}, **spec)
    second = catalog.register_adapter(name="faq", version=None, lineage={}, **spec)
    assert (first.id, first.version, second.id) == ("faq-v1", 1, "faq-v2")
    assert catalog.get_adapter("faq-v1") == first and catalog.get_adapter("faq-v3") is None
    assert [a.id for a in catalog.list_adapters(name="faq")] == ["faq-v2", "faq-v1"]
    public = first.public()
    assert list(public) == [c.name for c in adapters.columns]
    assert public["lineage"] == {"commit": "c"} and public["created_at"] == first.created_at.isoformat()

    catalog.set_alias("prod", "faq-v1")
    switched = catalog.set_alias("prod", "faq-v2", updated_by="me", decision={"gate": "g"}, expect="faq-v1")
    assert (switched.target, switched.previous, switched.decision) == ("faq-v2", "faq-v1", {"gate": "g"})
    assert catalog.get_alias("prod") == switched and catalog.get_alias("nope") is None
    assert [a.alias for a in catalog.list_aliases()] == ["prod"]
    assert list(switched.public()) == [c.name for c in model_aliases.columns]
    assert switched.public()["updated_at"] == switched.updated_at.isoformat()
