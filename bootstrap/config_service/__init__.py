"""The config service: a versioned ``(workspace, type, key) -> value`` store with pushes."""

from .postgres_store import PostgresStore, StoreUnavailable
from .service import ConfigService, main, make_store
from .sqlite_store import SqliteStore
from .store import ConfigStore

__all__ = [
    "ConfigService",
    "ConfigStore",
    "PostgresStore",
    "SqliteStore",
    "StoreUnavailable",
    "main",
    "make_store",
]
