"""API keys: stored only as hashes, expiring and revocable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from welip.store import Database, KeyStore, hash_key


def test_keys_are_stored_only_as_hashes_and_expire(database: Database) -> None:
    keys = KeyStore(database)
    record, key = keys.create_key(name="ci", role="user", models=["m"], rpm=5)
    past = datetime.now(UTC) - timedelta(seconds=1)
    keys.create_key(name="old", role="user", expires_at=past)
    with database.engine.connect() as conn:
        dump = repr(conn.execute(sa.text("select * from api_keys")).fetchall())
    assert key not in dump and key[12:] not in dump
    found = keys.key_by_hash(hash_key(key))
    assert found is not None and found.usable() and found.models == ["m"] and found.rpm == 5
    assert not keys.key_by_hash(hash_key(keys.create_key(name="x", role="user", expires_at=past)[1])).usable()
    assert keys.revoke_key(record.id) and not keys.revoke_key(record.id)
    assert [k.name for k in keys.list_keys()] == ["x", "old"]
    assert {k.name for k in keys.list_keys(include_revoked=True)} == {"ci", "old", "x"}
