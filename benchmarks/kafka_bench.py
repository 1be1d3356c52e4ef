"""Kafka: the SDK against raw aiokafka, same broker, same run.

    python -m benchmarks.kafka_bench [--quick]

The broker comes from ``tests.brokers.kafka`` (a tansu started on a free
port, or ``TG_KAFKA_BOOTSTRAP``).  Workloads, 1 KiB payloads, run as
alternating raw/SDK rounds whose medians are reported:

* round trip: one caller sends a request and waits for its reply, one
  responder answers; sequential, so this is latency.  Raw: an aiokafka
  producer (``acks=all``) and two group consumers (background auto-commit),
  the responder's ``getone`` loop sends the reply, the caller awaits its own
  ``getone``.  SDK: ``RequestResponse`` + ``Responder`` over the Kafka backend
  (the full resilient stack, acks committed in the background).  Both fetch
  with ``fetch_max_wait_ms`` = the backend's setting (tansu does not wake a
  waiting fetch, so this bounds the round trip);
* produce: N sends then wait for every delivery report.  Raw: ``await
  producer.send()`` x N (enqueue only), then gather the futures.  SDK:
  ``BackendProducer.send`` x N + ``flush``.  Both at q1 (``acks=all``);
* consume: drain N messages from earliest in a fresh group, timed from the
  first message to the N-th (the group join is not counted).  Raw:
  ``getmany`` batches, auto-commit.  SDK: the backend consumer's ``receive``
  + ``acknowledge`` per message.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks.common import median, percentile, print_table, write_results
from tests.brokers import BrokerUnavailable
from tests.brokers.kafka import KafkaBroker
from trustgraph_pubsub import get_pubsub, naming
from trustgraph_pubsub.backends.kafka import KafkaBackend
from trustgraph_pubsub.request_response import RequestResponse, Responder
from trustgraph_schema import codec
from trustgraph_schema.topic import topic


@dataclass
class Payload:
    n: int
    text: str = ""


TEXT = "x" * 1000  # about 1 KiB encoded


def fresh(label: str) -> str:
    return topic(f"bench-{uuid.uuid4().hex[:8]}-{label}", qos="q1", tenant="tg", namespace="bench")


# -- raw aiokafka ---------------------------------------------------------------------


class Raw:
    def __init__(self, backend: KafkaBackend) -> None:
        self.bootstrap = backend.bootstrap_servers
        self.fetch_wait = backend.fetch_max_wait_ms

    def producer(self) -> Any:
        return AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0)

    def consumer(self, native: str, group: str) -> Any:
        return AIOKafkaConsumer(
            native,
            bootstrap_servers=self.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_wait,
            heartbeat_interval_ms=500,
        )

    async def round_trips(self, req: str, resp: str, n: int) -> list[float]:
        prod = self.producer()
        server = self.consumer(req, f"{req}.svc")
        caller = self.consumer(resp, f"{resp}.caller")
        await asyncio.gather(prod.start(), server.start(), caller.start())

        async def serve() -> None:
            while True:
                rec = await server.getone()
                await prod.send(resp, rec.value, headers=list(rec.headers))

        task = asyncio.create_task(serve())
        try:
            # Both groups joined and positioned before timing starts.
            await prod.send_and_wait(req, codec.encode(Payload(-1)), headers=[("id", b"warm")])
            await caller.getone()
            times = []
            for i in range(n):
                rid = uuid.uuid4().hex.encode()
                t0 = time.perf_counter()
                await prod.send(req, codec.encode(Payload(i, TEXT)), headers=[("id", rid)])
                while True:
                    rec = await caller.getone()
                    if dict(rec.headers).get("id") == rid:
                        break
                codec.decode(Payload, rec.value)
                times.append(time.perf_counter() - t0)
            return times
        finally:
            task.cancel()
            await asyncio.gather(prod.stop(), server.stop(), caller.stop(), return_exceptions=True)

    async def produce(self, native: str, n: int) -> float:
        prod = self.producer()
        await prod.start()
        try:
            await prod.send_and_wait(native, codec.encode(Payload(-1)))
            t0 = time.perf_counter()
            futs = [await prod.send(native, codec.encode(Payload(i, TEXT))) for i in range(n)]
            await asyncio.gather(*futs)
            return n / (time.perf_counter() - t0)
        finally:
            await prod.stop()

    async def consume(self, native: str, n: int) -> float:
        cons = self.consumer(native, f"{native}.raw-{uuid.uuid4().hex[:6]}")
        await cons.start()
        try:
            got, t0 = 0, 0.0
            while got < n:
                batch = await cons.getmany(timeout_ms=1000, max_records=500)
                for records in batch.values():
                    if not t0 and records:
                        t0 = time.perf_counter()
                    for rec in records:
                        codec.decode(Payload, rec.value)
                    got += len(records)
            return (n - 1) / (time.perf_counter() - t0)
        finally:
            await cons.stop()


# -- SDK ------------------------------------------------------------------------------


class Sdk:
    def __init__(self, backend: KafkaBackend) -> None:
        self.backend = backend

    async def round_trips(self, req: str, resp: str, n: int) -> list[float]:
        async def handle(p: Payload, props: dict[str, str]) -> Payload:
            return p

        responder = Responder(self.backend, req, Payload, resp, Payload, handle, subscription="svc")
        caller = RequestResponse(self.backend, req, Payload, resp, Payload)
        await responder.start()
        await caller.start()
        try:
            await caller.request(Payload(-1), timeout=60)
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                await caller.request(Payload(i, TEXT), timeout=30)
                times.append(time.perf_counter() - t0)
            return times
        finally:
            await caller.stop()
            await responder.stop()

    async def produce(self, name: str, n: int) -> float:
        p = await self.backend.create_producer(name, Payload)
        try:
            await p.send(Payload(-1))
            await p.flush()
            t0 = time.perf_counter()
            for i in range(n):
                await p.send(Payload(i, TEXT))
            await p.flush()
            return n / (time.perf_counter() - t0)
        finally:
            await p.close()

    async def consume(self, name: str, n: int) -> float:
        c = await self.backend.create_consumer(
            name, f"sdk-{uuid.uuid4().hex[:6]}", Payload, initial_position="earliest"
        )
        try:
            msg = await c.receive(timeout=60)
            t0 = time.perf_counter()
            msg.value()
            await c.acknowledge(msg)
            for _ in range(n - 1):
                msg = await c.receive(timeout=60)
                msg.value()
                await c.acknowledge(msg)
            return (n - 1) / (time.perf_counter() - t0)
        finally:
            await c.close()


# -- driver ---------------------------------------------------------------------------


async def run(quick: bool) -> None:
    broker = KafkaBroker()
    try:
        broker.start()
    except BrokerUnavailable as exc:
        raise SystemExit(f"kafka broker unavailable: {exc}") from exc
    try:
        backend = get_pubsub(pubsub_backend="kafka", **broker.backend_config())
        assert isinstance(backend, KafkaBackend)
        raw, sdk = Raw(backend), Sdk(backend)
        rounds = 1 if quick else 3
        rtt_n = 200 if quick else 1000
        stream_n = 20_000

        rtt: dict[str, list[list[float]]] = {"raw": [], "sdk": []}
        tput: dict[str, list[float]] = {k: [] for k in ("raw produce", "sdk produce", "raw consume", "sdk consume")}
        for r in range(rounds):
            for side, impl in (("raw", raw), ("sdk", sdk)):
                req, resp = fresh("req"), fresh("resp")
                if side == "raw":
                    # Same topic shape for both: made through the backend.
                    await backend.create_queue(req, "svc")
                    await backend.create_queue(resp, "caller")
                    times = await raw.round_trips(naming.kafka_topic(req), naming.kafka_topic(resp), rtt_n)
                else:
                    times = await impl.round_trips(req, resp, rtt_n)
                rtt[side].append(times)
                print(f"  {side} round trips: p50 {percentile(times, 50) * 1000:.2f} ms", flush=True)
                gc.collect()
            for side in ("raw", "sdk"):
                name = fresh("stream")
                await backend.create_queue(name, "bench")
                if side == "raw":
                    native = naming.kafka_topic(name)
                    tput["raw produce"].append(await raw.produce(native, stream_n))
                    tput["raw consume"].append(await raw.consume(native, stream_n + 1))
                else:
                    tput["sdk produce"].append(await sdk.produce(name, stream_n))
                    tput["sdk consume"].append(await sdk.consume(name, stream_n + 1))
                print(f"  {side} produce {tput[side + ' produce'][-1]:,.0f} msg/s, "
                      f"consume {tput[side + ' consume'][-1]:,.0f} msg/s", flush=True)
                gc.collect()
            print(f"round {r + 1}/{rounds} done", flush=True)
        await backend.close()

        def ms(v: float) -> float:
            return v * 1000

        p50 = {s: median([percentile(t, 50) for t in rtt[s]]) for s in rtt}
        p99 = {s: median([percentile(t, 99) for t in rtt[s]]) for s in rtt}
        rows: list[list[Any]] = [
            ["round trip p50 (ms)", ms(p50["raw"]), ms(p50["sdk"]), p50["sdk"] / p50["raw"]],
            ["round trip p99 (ms)", ms(p99["raw"]), ms(p99["sdk"]), p99["sdk"] / p99["raw"]],
        ]
        med = {k: median(v) for k, v in tput.items()}
        for what in ("produce", "consume"):
            rows.append([f"{what} {stream_n} msg/s", med[f"raw {what}"], med[f"sdk {what}"],
                         med[f"sdk {what}"] / med[f"raw {what}"]])
        print_table(
            f"Kafka (tansu, fetch_max_wait_ms={backend.fetch_max_wait_ms}, 1 KiB, "
            f"median of {rounds} round(s), {rtt_n} round trips each)",
            ["workload", "raw aiokafka", "SDK", "SDK/raw"],
            rows,
        )
        write_results("kafka", {
            "broker": "tansu" if not broker.quirks == frozenset() else broker.bootstrap,
            "quick": quick,
            "rounds": rounds,
            "fetch_max_wait_ms": backend.fetch_max_wait_ms,
            "round_trip_ms": {s: {"p50": ms(p50[s]), "p99": ms(p99[s])} for s in p50},
            "round_trip_p50_ratio": p50["sdk"] / p50["raw"],
            "stream_messages": stream_n,
            "msg_per_s": med,
            "runs": {"round_trip_p50_ms": {s: [ms(percentile(t, 50)) for t in rtt[s]] for s in rtt},
                     "msg_per_s": tput},
        })
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, 200 round trips")
    args = parser.parse_args()
    asyncio.run(run(args.quick))


if __name__ == "__main__":
    main()
