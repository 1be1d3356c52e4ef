"""The config stores themselves: versions, atomic batches, snapshots, concurrent writers.

Both stores run the same cases: SQLite in a temporary file, PostgreSQL in a
fresh schema of the machine's database (``TG_POSTGRES_DSN``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bootstrap.config_service import PostgresStore, SqliteStore, StoreUnavailable
from bootstrap.config_service.store import SqlStore
from tests.services.helpers import PG_DSN, drop_schema, pg_schema

WRITERS = 50
WRITES_EACH = 10


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    if request.param == "sqlite":
        s: SqlStore = SqliteStore(tmp_path / "sub" / "config.db")
        await s.open()
        yield s
        await s.close()
        return
    schema = await pg_schema()
    s = PostgresStore(PG_DSN, schema=schema)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        await drop_schema(schema)


async def test_empty_store_starts_at_version_zero(store: SqlStore) -> None:
    assert await store.version() == 0
    assert await store.get("w", [("t", "k")]) == (0, [])
    assert await store.values_all_workspaces("t") == (0, [])


async def test_each_write_is_one_version_and_reads_carry_it(store: SqlStore) -> None:
    v1 = await store.write("w", [("t", "a", "1"), ("t", "b", "2"), ("u", "c", "3")], [])
    assert v1 == 1
    v2 = await store.write("w", [("t", "a", "10")], [("t", "b"), ("t", "missing")])
    assert v2 == 2
    assert await store.get("w", [("t", "a"), ("t", "b")]) == (2, [("t", "a", "10")])
    assert await store.keys("w", "t") == (2, ["a"])
    assert await store.values("w", "u") == (2, [("c", "3")])
    await store.write("v", [("t", "z", "9")], [])
    assert await store.values_all_workspaces("t") == (3, [("v", "z", "9"), ("w", "a", "10")])
    assert await store.keys_all_workspaces("t") == (3, [("v", "z"), ("w", "a")])
    assert await store.workspace("w") == (3, [("t", "a", "10"), ("u", "c", "3")])


async def test_pushed_writes_chain_their_versions(store: SqlStore) -> None:
    assert await store.write_many([("w", "t", "a", "1")], [], push=True) == (1, 0)
    assert await store.write_many([("_r", "t", "a", "1")], [], push=False) == (2, None)
    assert await store.write_many([("w", "t", "a", "2"), ("_r", "t", "b", "1")], [("w", "t", "x")],
                                  push=True) == (3, 1)
    assert await store.write_many([], [("w", "t", "a")], push=True) == (4, 3)
    assert (await store.values("_r", "t"))[1] == [("a", "1"), ("b", "1")]


async def test_a_failed_batch_writes_nothing_and_takes_no_version(store: SqlStore) -> None:
    await store.write("w", [("t", "a", "1")], [])
    with pytest.raises(Exception):  # noqa: B017 (each driver has its own error class)
        # NUL is refused by PostgreSQL; SQLite is given a bad parameter type instead.
        bad = "x\x00y" if isinstance(store, PostgresStore) else object()
        await store.write("w", [("t", "b", "2"), ("t", "c", bad)], [("t", "a")])  # type: ignore[list-item]
    assert await store.version() == 1
    assert (await store.values("w", "t"))[1] == [("a", "1")]


async def test_concurrent_writers_lose_nothing_and_never_share_a_version(store: SqlStore) -> None:
    async def writer(n: int) -> list[int]:
        return [await store.write("w", [("t", f"{n}-{i}", str(i))], []) for i in range(WRITES_EACH)]

    versions = [v for vs in await asyncio.gather(*(writer(n) for n in range(WRITERS))) for v in vs]
    total = WRITERS * WRITES_EACH
    assert sorted(versions) == list(range(1, total + 1))
    version, keys = await store.keys("w", "t")
    assert version == total and len(keys) == total


async def test_a_read_never_sees_a_version_newer_than_its_data(store: SqlStore) -> None:
    """Each write puts its own version as the value: a read must see value == version."""
    stop = asyncio.Event()
    bad: list[tuple[int, list[tuple[str, ...]]]] = []

    async def write() -> None:
        for _ in range(100):
            v = await store.version()
            await store.write("w", [("t", "k", str(v + 1))], [])
        stop.set()

    async def read() -> None:
        while not stop.is_set():
            version, rows = await store.values("w", "t")
            if version and rows != [("k", str(version))]:
                bad.append((version, rows))
            await asyncio.sleep(0)

    await asyncio.gather(write(), read(), read())
    assert not bad, bad[:3]


async def test_two_postgres_replicas_share_one_version(tmp_path: Path) -> None:
    schema = await pg_schema()
    replicas = [PostgresStore(PG_DSN, schema=schema, pool_size=5) for _ in range(2)]
    try:
        await asyncio.gather(*(r.open() for r in replicas))

        async def writer(n: int) -> list[int]:
            r = replicas[n % 2]
            return [await r.write("w", [("t", f"{n}-{i}", "1")], []) for i in range(WRITES_EACH)]

        versions = [v for vs in await asyncio.gather(*(writer(n) for n in range(WRITERS))) for v in vs]
        assert sorted(versions) == list(range(1, WRITERS * WRITES_EACH + 1))
        assert (await replicas[0].keys("w", "t"))[0] == WRITERS * WRITES_EACH
    finally:
        for r in replicas:
            await r.close()
        await drop_schema(schema)


async def test_sqlite_calls_run_off_the_event_loop(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    await store.open()
    seen: set[int] = set()
    original = store._run

    async def spy(fn):  # type: ignore[no-untyped-def]
        def wrapped(conn):  # type: ignore[no-untyped-def]
            seen.add(threading.get_ident())
            return fn(conn)
        return await original(wrapped)

    store._run = spy  # type: ignore[method-assign]
    await store.write("w", [("t", "k", "1")], [])
    await store.values("w", "t")
    await store.close()
    assert seen and threading.get_ident() not in seen


async def test_the_sqlite_file_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "c.db"
    store = SqliteStore(path)
    await store.open()
    await store.write("w", [("t", "k", '"v"')], [])
    await store.close()
    again = SqliteStore(path)
    await again.open()
    assert await again.get("w", [("t", "k")]) == (1, [("t", "k", '"v"')])
    await again.close()


async def test_an_unreachable_database_is_a_clear_error_without_the_password() -> None:
    store = PostgresStore(
        "postgresql://tg:s3cret-pw@127.0.0.1:1/nowhere", schema="x", connect_timeout=2
    )
    with pytest.raises(StoreUnavailable) as err:
        await store.open()
    text = str(err.value) + repr(store)
    assert "127.0.0.1:1" in text and "s3cret-pw" not in text
