"""The data layer: metadata database (PostgreSQL or SQLite) and the Redis connection."""

from welip.store._database import (
    DEFAULT_DATABASE_URL,
    KEY_PREFIX,
    Database,
    KeyRecord,
    database_url_from_env,
    hash_key,
)
from welip.store._redis import redis_from_env

__all__ = [
    "DEFAULT_DATABASE_URL",
    "KEY_PREFIX",
    "Database",
    "KeyRecord",
    "database_url_from_env",
    "hash_key",
    "redis_from_env",
]
