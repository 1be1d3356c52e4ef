"""The embedded config store: one SQLite file, in WAL mode.

The ``sqlite3`` module blocks, so every call runs on one thread of its own
(a single-worker executor) that owns the one connection: the event loop never
waits on the disk, and the calls are serialised without a lock.  Reads run in
a deferred transaction (a WAL snapshot); writes in ``BEGIN IMMEDIATE``, which
takes the write lock at once, so a second process on the same file waits
(``busy_timeout``) instead of failing half-way.  ``synchronous=NORMAL`` is
WAL's usual setting: a committed write survives a crash of the process; a
power cut may lose the last transactions, never corrupt the file.

The file (and its directory) is created on first start.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .store import (
    SQL_BUMP,
    SQL_BUMP_PUSH,
    SQL_SCHEMA,
    SQL_VERSION,
    VERSION_TABLE,
    Query,
    Row,
    SqlStore,
)

__all__ = ["SqliteStore"]

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000


class SqliteStore(SqlStore):
    """A ``ConfigStore`` in the SQLite file ``path`` (``":memory:"`` for a throwaway one)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise RuntimeError(f"config store {self.path} is not open")
        conn = self._conn
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="config-sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SQL_SCHEMA:
                conn.execute(statement)
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({VERSION_TABLE})")}
            for column in ("pushed", "prev_pushed"):  # a database made before they existed
                if column not in columns:
                    conn.execute(
                        f"ALTER TABLE {VERSION_TABLE} ADD COLUMN {column} BIGINT NOT NULL DEFAULT 0"
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        conn, self._conn = self._conn, None
        if executor is None:
            return
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def _read(self, queries: list[Query]) -> tuple[int, list[list[Row]]]:
        def read(conn: sqlite3.Connection) -> tuple[int, list[list[Row]]]:
            conn.execute("BEGIN")
            try:
                version = _one(conn.execute(SQL_VERSION).fetchone())
                results = [conn.execute(sql, params).fetchall() for sql, params in queries]
            finally:
                conn.execute("COMMIT")
            return version, results

        return await self._run(read)

    async def _write(self, statements: list[Query], push: bool) -> tuple[int, int]:
        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(SQL_BUMP_PUSH if push else SQL_BUMP).fetchone()
                _one(row)
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return int(row[0]), int(row[1])

        return await self._run(write)

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r}>"


def _one(row: Any) -> int:
    if row is None:
        raise RuntimeError("the config store has no version row")
    return int(row[0])
