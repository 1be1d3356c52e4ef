"""The shared config store: PostgreSQL through psycopg 3's async driver.

Several config-svc replicas can serve one deployment from one database.
Writes run at READ COMMITTED: the first statement increments the version
row, which takes its row lock, so concurrent writers (from any replica)
queue there and each gets the next version.  Reads run in a REPEATABLE READ,
READ ONLY transaction, so the version and the data they return come from
one snapshot.

Connections come from a ``psycopg_pool.AsyncConnectionPool`` (``pool_size``
at most).  The tables live in ``schema`` (created when missing; default
``public``), set as each connection's ``search_path``.  Creating the schema
is serialised with an advisory lock, so replicas starting together do not
trip over each other.  The DSN is shown only with its password masked.

A lost database connection surfaces as ``StoreUnavailable``, which the
service answers as an ``unavailable`` error: the caller may retry.
"""

from __future__ import annotations

import re
from typing import Any

from trustgraph_pubsub.redact import redact_conninfo

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

__all__ = ["PostgresStore", "StoreUnavailable"]

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: any constant: the advisory lock that serialises schema creation
_SCHEMA_LOCK = 0x7467_636F_6E66  # "tgconf"


class StoreUnavailable(Exception):
    """The database could not be reached or dropped the connection."""


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresStore(SqlStore):
    """A ``ConfigStore`` in PostgreSQL at ``dsn``, tables in ``schema``."""

    def __init__(
        self, dsn: str, *, schema: str = "public", pool_size: int = 10, connect_timeout: float = 10.0
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"--postgres-schema {schema!r}: expected an SQL identifier")
        if pool_size < 1:
            raise ValueError(f"--postgres-pool-size must be at least 1, got {pool_size}")
        self.__dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._pool: Any = None
        self._errors: tuple[type[BaseException], ...] = ()

    @property
    def dsn(self) -> str:
        """The connection string with its password masked."""
        return redact_conninfo(self.__dsn) or ""

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            import psycopg
            from psycopg_pool import AsyncConnectionPool
        except ImportError as exc:
            raise RuntimeError(
                "the postgres config store needs psycopg: pip install trustgraph-pubsub[postgres]"
            ) from exc
        self._errors = (psycopg.OperationalError, psycopg.InterfaceError)
        await self._create_schema(psycopg)
        pool = AsyncConnectionPool(
            self.__dsn,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"options": f"-c search_path={self.schema}"},
            timeout=self.connect_timeout,
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except Exception as exc:
            await pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {self.dsn}: {exc}") from None
        self._pool = pool

    async def _create_schema(self, psycopg: Any) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.__dsn, connect_timeout=max(1, int(self.connect_timeout))
            )
        except psycopg.Error as exc:
            # psycopg's message may quote the DSN: show ours, redacted.
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self.dsn}: {type(exc).__name__}"
                f"{_reason(exc, self.__dsn)}"
            ) from None
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(f'SET LOCAL search_path TO "{self.schema}"')
                for statement in SQL_SCHEMA:
                    await conn.execute(statement)
                for column in ("pushed", "prev_pushed"):  # a database made before they existed
                    await conn.execute(
                        f"ALTER TABLE {VERSION_TABLE} ADD COLUMN IF NOT EXISTS {column} "
                        "BIGINT NOT NULL DEFAULT 0"
                    )
        finally:
            await conn.close()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _check(self) -> Any:
        if self._pool is None:
            raise RuntimeError(f"config store {self.dsn} is not open")
        return self._pool

    async def _read(self, queries: list[Query]) -> tuple[int, list[list[Row]]]:
        pool = self._check()
        try:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cur = await conn.execute(SQL_VERSION)
                version = int((await cur.fetchone())[0])
                results: list[list[Row]] = []
                for sql, params in queries:
                    cur = await conn.execute(_pg(sql), params)
                    results.append([tuple(r) for r in await cur.fetchall()])
        except self._errors as exc:
            raise StoreUnavailable(f"PostgreSQL at {self.dsn}: {type(exc).__name__}") from exc
        return version, results

    async def _write(self, statements: list[Query], push: bool) -> tuple[int, int]:
        pool = self._check()
        try:
            async with pool.connection() as conn, conn.transaction():
                cur = await conn.execute(SQL_BUMP_PUSH if push else SQL_BUMP)
                row = await cur.fetchone()
                for sql, params in statements:
                    await conn.execute(_pg(sql), params)
        except self._errors as exc:
            raise StoreUnavailable(f"PostgreSQL at {self.dsn}: {type(exc).__name__}") from exc
        return int(row[0]), int(row[1])

    def __repr__(self) -> str:
        return f"<PostgresStore {self.dsn!r} schema={self.schema!r}>"


def _reason(exc: BaseException, secret: str) -> str:
    """The driver's first line of explanation, unless it could carry the DSN."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not text or secret in text or "password" in text.lower():
        return ""
    return f": {text}"
