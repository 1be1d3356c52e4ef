"""The config service: put and get round trips per second, per broker and store.

    python -m benchmarks.config_bench [--quick] [--brokers memory,rabbitmq,...]

For each broker (started as the tests start them) and each store (SQLite in a
temporary file, PostgreSQL in a fresh schema of ``TG_POSTGRES_DSN``), a config
service runs in this process on a backend of its own, and one ``ConfigClient``
on another backend makes sequential requests:

* ``put``: one entry per request (one store transaction, one push each);
* ``get``: one key per request;
* ``echo``: the baseline, in the same run on the same broker: a
  ``RequestResponse`` caller and a ``Responder`` that returns the request,
  so ``get / echo`` is what the config service adds to a bare round trip.

Rounds alternate echo / put / get; the table gives the median round's rate and
the median latency of all requests.  Sequential round trips measure latency:
with many callers at once the service serves ``--concurrency`` requests at a
time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import median, percentile, print_table, write_results
from bootstrap.config_service import ConfigService, PostgresStore, SqliteStore
from bootstrap.config_service.store import ConfigStore
from tests.brokers import Broker, BrokerUnavailable, broker_class
from tests.services.helpers import PG_DSN
from trustgraph_pubsub import RequestResponse, Responder
from trustgraph_pubsub.config_client import ConfigClient
from trustgraph_schema.topic import topic

BROKERS = ("memory", "rabbitmq", "mqtt", "pulsar", "kafka")


@dataclass
class Echo:
    n: int


async def _timed(n: int, call: Any) -> tuple[float, list[float]]:
    lat: list[float] = []
    began = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        await call(i)
        lat.append(time.perf_counter() - t)
    return n / (time.perf_counter() - began), lat


async def _pg_store() -> tuple[ConfigStore, str] | None:
    import psycopg

    schema = f"tg_bench_{uuid.uuid4().hex[:8]}"
    try:
        conn = await psycopg.AsyncConnection.connect(PG_DSN, connect_timeout=5)
        await conn.close()
    except psycopg.Error as exc:
        print(f"PostgreSQL at {PG_DSN} unavailable ({exc}); its rows are skipped")
        return None
    return PostgresStore(PG_DSN, schema=schema), schema


async def _drop(schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def bench_store(broker: Broker, store_name: str, n: int, rounds: int) -> dict[str, Any] | None:
    schema = None
    if store_name == "sqlite":
        store: ConfigStore = SqliteStore(Path(tempfile.mkdtemp(prefix="tg-bench-")) / "c.db")
    else:
        made = await _pg_store()
        if made is None:
            return None
        store, schema = made
    backends = [broker.make_backend() for _ in range(3)]
    svc = ConfigService(backend=backends[0], store=store, concurrency=8)
    echo_t = topic(f"echo-{uuid.uuid4().hex[:8]}", namespace="bench")
    echo_r = topic(f"echo-{uuid.uuid4().hex[:8]}-r", namespace="bench")
    responder = Responder(backends[0], echo_t, Echo, echo_r, Echo, lambda req, props: req,
                          subscription="echo")
    rates: dict[str, list[float]] = {"echo": [], "put": [], "get": []}
    lats: dict[str, list[float]] = {"echo": [], "put": [], "get": []}
    try:
        await svc.start()
        await responder.start()
        async with ConfigClient(backends[1], timeout=30) as client, \
                RequestResponse(backends[2], echo_t, Echo, echo_r, Echo) as rr:
            await client.wait_until_up(60)
            await rr.request(Echo(0), timeout=60)
            await client.put("w", "bench", "k0", '"warm"')
            for r in range(rounds):
                for kind in ("echo", "put", "get"):
                    if kind == "echo":
                        async def call(i: int) -> None:
                            await rr.request(Echo(i), timeout=30)
                    elif kind == "put":
                        async def call(i: int, r: int = r) -> None:
                            await client.put("w", "bench", f"k{i}", f'{{"round": {r}, "i": {i}}}')
                    else:
                        async def call(i: int) -> None:
                            await client.get("w", "bench", f"k{i}")
                    rate, lat = await _timed(n, call)
                    rates[kind].append(rate)
                    lats[kind] += lat
    finally:
        with contextlib.suppress(Exception):
            await responder.stop()
        await svc.stop()
        for b in backends:
            await b.close()
        if schema is not None:
            await _drop(schema)
    out: dict[str, Any] = {"broker": broker.name, "store": store_name}
    for kind in rates:
        out[f"{kind}_per_s"] = median(rates[kind])
        out[f"{kind}_p50_ms"] = percentile(lats[kind], 50) * 1000
        out[f"{kind}_p99_ms"] = percentile(lats[kind], 99) * 1000
    out["get_vs_echo"] = out["get_per_s"] / out["echo_per_s"]
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 requests x 1 round")
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    n, rounds = (100, 1) if args.quick else (300, 3)
    logging.basicConfig(level=logging.WARNING)
    rows: list[dict[str, Any]] = []
    for name in args.brokers.split(","):
        broker = broker_class(name)()
        try:
            broker.start()
        except BrokerUnavailable as exc:
            print(f"{name}: unavailable, skipped ({exc})")
            continue
        try:
            for store in args.stores.split(","):
                row = await bench_store(broker, store, n, rounds)
                if row is not None:
                    rows.append(row)
                    print(f"{name}/{store}: put {row['put_per_s']:.0f}/s get {row['get_per_s']:.0f}/s "
                          f"echo {row['echo_per_s']:.0f}/s")
        finally:
            broker.stop()
    print_table(
        f"config service round trips, sequential, {n} requests x {rounds} round(s)",
        ["broker", "store", "put/s", "put p50 ms", "get/s", "get p50 ms", "echo/s", "echo p50 ms",
         "get/echo"],
        [[r["broker"], r["store"], r["put_per_s"], r["put_p50_ms"], r["get_per_s"], r["get_p50_ms"],
          r["echo_per_s"], r["echo_p50_ms"], r["get_vs_echo"]] for r in rows],
    )
    write_results("config", {"requests": n, "rounds": rounds, "rows": rows})


if __name__ == "__main__":
    asyncio.run(main())
