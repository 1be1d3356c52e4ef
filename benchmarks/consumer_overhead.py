"""What the resilient ``Consumer`` costs per message over its backend consumer.

    python -m benchmarks.consumer_overhead [--n 20000] [--rounds 3]
                                           [--concurrency 1,100] [--backends memory,pulsar]

The same N waiting messages are drained twice per round, each time from a
fresh, pre-filled subscription:

* raw: the backend consumer's own loop, ``receive`` + ``value()`` +
  ``acknowledge``, with ``prefetch`` equal to the concurrency under test;
* Consumer: the resilient ``Consumer`` with a no-op async handler and that
  ``concurrency`` (it passes the same ``prefetch`` to the backend).

Both sides decode (``value()``), so the difference is the ``Consumer``'s
own bookkeeping: ``wall us`` is ``1/sdk - 1/raw`` per message in wall-clock
time, ``cpu us`` the same in this process's CPU time (all threads), which a
busy shared machine disturbs much less.
Payloads: ``bytes`` (1 KiB, no schema) and ``dataclass`` (a small dataclass).
The Pulsar rows use pulsar-lite started by ``tests.brokers.pulsar`` (or the
broker ``TG_PULSAR_URL`` names); pulsar-lite may deliver duplicates when a
backlog drains, so both sides count deliveries, not distinct messages.
Rounds alternate raw and Consumer so machine load hits both alike; medians
are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from dataclasses import dataclass
from typing import Any

from benchmarks.common import median, print_table, write_results
from tests.brokers import BrokerUnavailable
from tests.brokers.pulsar import PulsarBroker
from trustgraph_pubsub import Message, PubSubBackend
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub
from trustgraph_pubsub.consumer import Consumer
from trustgraph_pubsub.metrics import Metrics
from trustgraph_schema.topic import topic


@dataclass
class Small:
    n: int
    name: str = ""


PAYLOADS: dict[str, tuple[type[Any] | None, Any]] = {
    "bytes": (None, b"x" * 1024),
    "dataclass": (Small, Small(7, "seven")),
}


async def fill(backend: PubSubBackend, name: str, schema: type[Any] | None, item: Any, n: int) -> None:
    """A subscription ``c`` on ``name`` with ``n`` messages waiting."""
    await backend.ensure_queue(name, "c")
    p = await backend.create_producer(name, schema)
    for _ in range(n):
        await p.send(item)
    await p.flush()
    await p.close()


async def raw_loop(backend: PubSubBackend, name: str, schema: type[Any] | None, n: int,
                   prefetch: int) -> tuple[float, float]:
    """(wall, cpu) seconds per message."""
    c = await backend.create_consumer(name, "c", schema, prefetch=prefetch)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        msg = await c.receive(timeout=60)
        msg.value()
        await c.acknowledge(msg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await c.close()
    return wall / n, cpu / n


async def consumer_loop(backend: PubSubBackend, name: str, schema: type[Any] | None, n: int,
                        concurrency: int, metrics: Metrics) -> tuple[float, float]:
    """(wall, cpu) seconds per message."""
    done = asyncio.Event()
    count = 0

    async def handler(msg: Message) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    consumer = Consumer(backend, name, "c", schema, handler, concurrency=concurrency,
                        metrics=metrics)
    await consumer.start()  # the workers have not run yet: the clock starts with them
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.wait_for(done.wait(), 120)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await consumer.stop()
    return wall / n, cpu / n


async def measure(label: str, backend: PubSubBackend, args: argparse.Namespace,
                  rows: list[list[Any]], results: dict[str, Any]) -> None:
    uid = uuid.uuid4().hex[:8]
    metrics = Metrics()  # the process-wide registry, as a service would have it
    k = 0
    for pname, (schema, item) in PAYLOADS.items():
        for conc in args.concurrency:
            raws: list[tuple[float, float]] = []
            sdks: list[tuple[float, float]] = []
            for _ in range(args.rounds):
                for side in ("raw", "consumer"):
                    k += 1
                    name = topic(f"ovh-{uid}-{k}", qos="q1", tenant="tg", namespace="bench")
                    await fill(backend, name, schema, item, args.n)
                    gc.collect()
                    if side == "raw":
                        raws.append(await raw_loop(backend, name, schema, args.n, conc))
                    else:
                        sdks.append(await consumer_loop(backend, name, schema, args.n, conc,
                                                        metrics))
                    c = await backend.create_consumer(name, "c", schema)
                    await c.unsubscribe()
            rw, sw = median([x[0] for x in raws]), median([x[0] for x in sdks])
            rc, sc = median([x[1] for x in raws]), median([x[1] for x in sdks])
            r, s = 1 / rw, 1 / sw
            wall_us, cpu_us = (sw - rw) * 1e6, (sc - rc) * 1e6
            rows.append([label, pname, conc, r, s, s / r, wall_us, cpu_us])
            results[f"{label}/{pname}/c{conc}"] = {
                "raw_per_s": r, "consumer_per_s": s, "ratio": s / r,
                "overhead_wall_us": wall_us, "overhead_cpu_us": cpu_us,
                "raw_runs_s_per_msg": raws, "consumer_runs_s_per_msg": sdks,
            }


async def main(args: argparse.Namespace) -> None:
    rows: list[list[Any]] = []
    results: dict[str, Any] = {"n": args.n, "rounds": args.rounds, "concurrency": args.concurrency}
    if "memory" in args.backends:
        mem = MemoryBackend(MemoryHub())
        try:
            await measure("memory", mem, args, rows, results)
        finally:
            await mem.close()
    if "pulsar" in args.backends:
        broker = PulsarBroker()
        try:
            broker.start()
        except BrokerUnavailable as exc:
            print(f"pulsar skipped: {exc}")
        else:
            try:
                backend = broker.make_backend()
                try:
                    await measure("pulsar", backend, args, rows, results)
                finally:
                    await backend.close()
            finally:
                broker.stop()
    print_table(
        f"Consumer overhead (n={args.n}, median of {args.rounds}; no-op handler)",
        ["backend", "payload", "concurrency", "raw msg/s", "Consumer msg/s", "ratio",
         "wall us", "cpu us"],
        rows,
    )
    write_results("consumer_overhead", results)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 100])
    p.add_argument("--backends", type=lambda s: s.split(","), default=["memory", "pulsar"])
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
