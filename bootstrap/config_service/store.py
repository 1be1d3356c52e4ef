"""The config store: ``(workspace, type, key) -> value`` under one global version.

``ConfigStore`` is the Protocol the service is written against; two stores
implement it, SQLite (embedded, the default) and PostgreSQL (several
config-svc replicas on one database).  Both are ``SqlStore``s: the same SQL,
run by each database's own driver, so they cannot drift apart.

The guarantees (what the upstream design got wrong, CONTROL_PLANE.md hazard 1):

* every write (a whole batch of puts and deletes) is one transaction that
  increments the global version in that same transaction and returns it, so
  two writers can never get the same version and no update is lost;
* every read runs in one snapshot and returns the version of that snapshot
  with its data, so a reader never records a version newer than its data;
* a write that will be pushed also records itself as the last pushed
  version, and returns the one before (``previous``): a push carries both,
  so a receiver knows exactly whether it missed a push, even though writes
  that touch only reserved workspaces take a version and push nothing.

The version lives in a one-row table; incrementing it takes that row's lock,
which orders concurrent writers, across replicas too.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ConfigStore", "Row", "SqlStore"]

#: one query and its parameters
Query = tuple[str, tuple[str, ...]]
Row = tuple[str, ...]


class ConfigStore(Protocol):
    """What the config service needs of a store.  Every read returns ``(version, rows)``."""

    async def open(self) -> None:
        """Connect, create the schema on first use.  Idempotent."""
        ...

    async def close(self) -> None: ...

    async def version(self) -> int: ...

    async def get(self, workspace: str, keys: list[tuple[str, str]]) -> tuple[int, list[Row]]:
        """``(type, key, value)`` of the keys that exist."""
        ...

    async def keys(self, workspace: str, type: str) -> tuple[int, list[str]]: ...

    async def values(self, workspace: str, type: str) -> tuple[int, list[Row]]:
        """``(key, value)`` sorted by key."""
        ...

    async def values_all_workspaces(self, type: str) -> tuple[int, list[Row]]:
        """``(workspace, key, value)`` sorted by workspace and key."""
        ...

    async def keys_all_workspaces(self, type: str) -> tuple[int, list[Row]]:
        """``(workspace, key)`` sorted by workspace and key."""
        ...

    async def workspace(self, workspace: str) -> tuple[int, list[Row]]:
        """``(type, key, value)`` of the whole workspace."""
        ...

    async def write(
        self, workspace: str, puts: list[tuple[str, str, str]], deletes: list[tuple[str, str]]
    ) -> int:
        """Upsert ``puts`` and delete ``deletes`` in one transaction; the new version."""
        ...

    async def write_many(
        self, puts: list[Row], deletes: list[Row], *, push: bool
    ) -> tuple[int, int | None]:
        """Upsert ``(workspace, type, key, value)`` and delete ``(workspace, type, key)``
        in one transaction, across workspaces.  ``(version, previous)``: the new
        version and, when ``push``, the last pushed version before it (else None)."""
        ...


# The SQL both stores run.  ``?`` placeholders; PostgreSQL's driver gets them as ``%s``.
TABLE = "tg_config"
VERSION_TABLE = "tg_config_version"

SQL_VERSION = f"SELECT version FROM {VERSION_TABLE} WHERE id = 1"
#: a write nobody is told about: a new version, the push pointer unchanged
SQL_BUMP = f"UPDATE {VERSION_TABLE} SET version = version + 1 WHERE id = 1 RETURNING version, pushed"
#: a write that will be pushed: a new version, which becomes the last pushed one
#: (every right-hand side reads the old row, so prev_pushed gets the old pointer)
SQL_BUMP_PUSH = (
    f"UPDATE {VERSION_TABLE} SET version = version + 1, prev_pushed = pushed, "
    "pushed = version + 1 WHERE id = 1 RETURNING version, prev_pushed"
)
SQL_GET = f"SELECT type, key, value FROM {TABLE} WHERE workspace = ? AND type = ? AND key = ?"
SQL_KEYS = f"SELECT key FROM {TABLE} WHERE workspace = ? AND type = ? ORDER BY key"
SQL_VALUES = f"SELECT key, value FROM {TABLE} WHERE workspace = ? AND type = ? ORDER BY key"
SQL_VALUES_ALL = (
    f"SELECT workspace, key, value FROM {TABLE} WHERE type = ? ORDER BY workspace, key"
)
SQL_KEYS_ALL = f"SELECT workspace, key FROM {TABLE} WHERE type = ? ORDER BY workspace, key"
SQL_WORKSPACE = (
    f"SELECT type, key, value FROM {TABLE} WHERE workspace = ? ORDER BY type, key"
)
SQL_UPSERT = (
    f"INSERT INTO {TABLE} (workspace, type, key, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (workspace, type, key) DO UPDATE SET value = excluded.value"
)
SQL_DELETE = f"DELETE FROM {TABLE} WHERE workspace = ? AND type = ? AND key = ?"
SQL_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " workspace TEXT NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
    " PRIMARY KEY (workspace, type, key))",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_by_type ON {TABLE} (type, workspace, key)",
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
    " id INTEGER PRIMARY KEY, version BIGINT NOT NULL,"
    " pushed BIGINT NOT NULL DEFAULT 0, prev_pushed BIGINT NOT NULL DEFAULT 0)",
    f"INSERT INTO {VERSION_TABLE} (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
)


class SqlStore:
    """A ``ConfigStore`` over SQL; subclasses run queries in one transaction each."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _read(self, queries: list[Query]) -> tuple[int, list[list[Row]]]:
        """Run ``queries`` in one read snapshot; its version and each query's rows."""
        raise NotImplementedError

    async def _write(self, statements: list[Query], push: bool) -> tuple[int, int]:
        """Bump the version (``SQL_BUMP_PUSH`` when ``push``), run ``statements``,
        commit; the bump's two returned values."""
        raise NotImplementedError

    async def version(self) -> int:
        version, _ = await self._read([])
        return version

    async def get(self, workspace: str, keys: list[tuple[str, str]]) -> tuple[int, list[Row]]:
        version, results = await self._read([(SQL_GET, (workspace, t, k)) for t, k in keys])
        return version, [row for rows in results for row in rows]

    async def keys(self, workspace: str, type: str) -> tuple[int, list[str]]:
        version, (rows,) = await self._read([(SQL_KEYS, (workspace, type))])
        return version, [r[0] for r in rows]

    async def values(self, workspace: str, type: str) -> tuple[int, list[Row]]:
        version, (rows,) = await self._read([(SQL_VALUES, (workspace, type))])
        return version, rows

    async def values_all_workspaces(self, type: str) -> tuple[int, list[Row]]:
        version, (rows,) = await self._read([(SQL_VALUES_ALL, (type,))])
        return version, rows

    async def keys_all_workspaces(self, type: str) -> tuple[int, list[Row]]:
        version, (rows,) = await self._read([(SQL_KEYS_ALL, (type,))])
        return version, rows

    async def workspace(self, workspace: str) -> tuple[int, list[Row]]:
        version, (rows,) = await self._read([(SQL_WORKSPACE, (workspace,))])
        return version, rows

    async def write(
        self, workspace: str, puts: list[tuple[str, str, str]], deletes: list[tuple[str, str]]
    ) -> int:
        version, _ = await self.write_many(
            [(workspace, t, k, v) for t, k, v in puts], [(workspace, t, k) for t, k in deletes],
            push=True,
        )
        return version

    async def write_many(
        self, puts: list[Row], deletes: list[Row], *, push: bool
    ) -> tuple[int, int | None]:
        statements: list[Query] = [(SQL_DELETE, tuple(d)) for d in deletes]
        statements += [(SQL_UPSERT, tuple(p)) for p in puts]
        version, previous = await self._write(statements, push)
        return version, (previous if push else None)
