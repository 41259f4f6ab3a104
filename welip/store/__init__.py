"""The data layer: metadata database (PostgreSQL or SQLite), Redis, artifact storage (local or S3)."""

from welip.store._database import (
    DEFAULT_DATABASE_URL,
    KEY_PREFIX,
    Database,
    KeyRecord,
    database_url_from_env,
    hash_key,
)
from welip.store._redis import redis_from_env
from welip.store._storage import filesystem, join_url, read_bytes, storage_url_from_env, write_bytes

__all__ = [
    "DEFAULT_DATABASE_URL",
    "KEY_PREFIX",
    "Database",
    "KeyRecord",
    "database_url_from_env",
    "filesystem",
    "hash_key",
    "join_url",
    "read_bytes",
    "redis_from_env",
    "storage_url_from_env",
    "write_bytes",
]
