"""Shared pieces of the control-plane tests: PostgreSQL, a chunking blueprint, waits."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.brokers import require_brokers

PG_DSN = os.environ.get("TG_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_HOW_TO = (
    "start PostgreSQL (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) "
    "or point TG_POSTGRES_DSN at a database the tests may create schemas in"
)


async def pg_schema() -> str:
    """A fresh schema name in the test database (skips, or fails under
    TG_REQUIRE_BROKERS=1, when PostgreSQL cannot be reached)."""
    import psycopg

    try:
        conn = await psycopg.AsyncConnection.connect(PG_DSN, connect_timeout=5)
    except psycopg.Error as exc:
        why = f"PostgreSQL at {PG_DSN} unavailable ({type(exc).__name__}); {PG_HOW_TO}"
        if require_brokers():
            pytest.fail(why)
        pytest.skip(why)
    await conn.close()
    return f"tg_test_{uuid.uuid4().hex[:12]}"


async def drop_schema(schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def eventually(
    check: Callable[[], Awaitable[Any] | Any], within: float = 30.0, step: float = 0.1, what: str = ""
) -> Any:
    """Call ``check`` until it returns something truthy; its value, or fail after ``within`` s."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result
        last = result
        if time.monotonic() > deadline:
            pytest.fail(f"not so within {within}s: {what or check} (last: {last!r})")
        await asyncio.sleep(step)


def chunk_blueprint(processor: str = "chunker") -> dict[str, Any]:
    """The example blueprint: one chunker per flow, its queues named per workspace and flow."""
    request = "q1/tg/flow/chunk-request.{workspace}.{id}"
    response = "q1/tg/flow/chunk-response.{workspace}.{id}"
    return {
        "description": "split text into chunks",
        "parameters": {
            "chunk-size": {"type": "chunk-size", "description": "characters per chunk", "order": 1},
            "chunk-overlap": {"type": "chunk-overlap", "description": "overlap", "order": 2,
                              "default": "0"},
        },
        "interfaces": {"chunk": {"request": request, "response": response}},
        "flow": {
            f"{processor}:{{id}}": {
                "topics": {"request": request, "response": response},
                "parameters": {"chunk-size": "{chunk-size}", "chunk-overlap": "{chunk-overlap}"},
            }
        },
    }


CHUNK_SIZE_TYPE = '{"type": "integer", "default": 4, "min": 1}'


def chunk_topics(workspace: str, flow_id: str) -> tuple[str, str]:
    return (f"q1/tg/flow/chunk-request.{workspace}.{flow_id}",
            f"q1/tg/flow/chunk-response.{workspace}.{flow_id}")
