"""The data layer: the metadata database (PostgreSQL or SQLite), a store per aggregate, Redis, artifacts."""

from welip.store._audit import AuditStore
from welip.store._backup import BackupError, BackupInfo, backup_database, find_tool, restore_database
from welip.store._batches import ACTIVE_BATCH_STATUSES, BatchRecord, BatchStore
from welip.store._catalog import AdapterRecord, AliasRecord, CatalogStore
from welip.store._crypto import DecryptionError, Keyring, keyring_from_env
from welip.store._database import (
    DEFAULT_DATABASE_URL,
    Database,
    as_utc,
    database_url_from_env,
    postgres_conninfo,
    sqlalchemy_database_url,
    statement_timeout_ms_from_env,
    utcnow,
)
from welip.store._eval_runs import EvalRunRecord, EvalRunStore
from welip.store._files import FileRecord, FileStore
from welip.store._keys import KEY_PREFIX, KeyRecord, KeyStore, hash_key
from welip.store._redis import redis_from_env
from welip.store._schema import agent_runs, agent_store_items, agent_threads
from welip.store._storage import (
    filesystem,
    join_url,
    read_bytes,
    s3_client_kwargs,
    storage_url_from_env,
    write_bytes,
)
from welip.store._tracking import DEFAULT_MLFLOW_URI, mlflow_uri, use_mlflow

__all__ = [
    "ACTIVE_BATCH_STATUSES",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_MLFLOW_URI",
    "KEY_PREFIX",
    "AdapterRecord",
    "AliasRecord",
    "AuditStore",
    "BackupError",
    "BackupInfo",
    "BatchRecord",
    "BatchStore",
    "CatalogStore",
    "Database",
    "DecryptionError",
    "EvalRunRecord",
    "EvalRunStore",
    "FileRecord",
    "FileStore",
    "KeyRecord",
    "KeyStore",
    "Keyring",
    "agent_runs",
    "agent_store_items",
    "agent_threads",
    "as_utc",
    "backup_database",
    "database_url_from_env",
    "filesystem",
    "find_tool",
    "hash_key",
    "join_url",
    "keyring_from_env",
    "mlflow_uri",
    "postgres_conninfo",
    "read_bytes",
    "redis_from_env",
    "restore_database",
    "s3_client_kwargs",
    "sqlalchemy_database_url",
    "statement_timeout_ms_from_env",
    "storage_url_from_env",
    "use_mlflow",
    "utcnow",
    "write_bytes",
]
