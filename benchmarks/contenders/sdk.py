"""The SDK, written the way the README tells a service author to.

``get_pubsub(**config)``; ``Producer`` (resilient, pipelined) with ``flush``;
``Consumer`` with a handler (ack on return; ``concurrency`` at the 8 the
README shows; ``prefetch`` the same as the raw client's: its default 100,
which the raw RabbitMQ and MQTT contenders use too, but 1,000 on Pulsar,
pulsar-client's default receiver queue, which the raw contender keeps and
the README names as Pulsar's throughput setting); ``RequestResponse`` and
``Responder``.  Nothing here reaches under the public API.

The consumers of a throughput trial handle nothing until every one of them
has started, as the raw Kafka contender drains only once every
``AIOKafkaConsumer.start`` returned (each returns when its member holds its
partitions).  Otherwise the clock of one contender alone would include the
group forming: on tansu the members whose SyncGroup reaches the broker
before the leader's are answered a second later (measured: 1.00 s, for raw
aiokafka members too), so a first member drained its partition and then
waited.  What arrives meanwhile waits in the consumer, as it waits in
aiokafka's fetch buffer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.workloads import TEXT, Payload, Seen, pace, payloads, run_pacer, warmup
from trustgraph_pubsub import Consumer, Message, Producer, RequestResponse, Responder, get_pubsub
from trustgraph_pubsub.consumer import DEFAULT_PREFETCH

CONCURRENCY = 8
#: like for like: the raw contender's receive queue, per broker
PREFETCH = {"pulsar": 1000}


class Sdk:
    name = "sdk"

    def __init__(self, broker: str, config: dict[str, Any]) -> None:
        self.backend = get_pubsub(**config)
        self.prefetch = PREFETCH.get(broker, DEFAULT_PREFETCH)

    async def close(self) -> None:
        await self.backend.close()

    async def produce(self, topic: str, n: int) -> float:
        values = payloads(n)
        w = warmup(n)
        async with Producer(self.backend, topic, Payload) as producer:
            for v in values[:w]:
                await producer.send(v)
            await producer.flush()
            t0 = time.perf_counter()
            for v in values[w:]:
                await producer.send(v)
            await producer.flush()
            return time.perf_counter() - t0

    async def consume(self, topic: str, sub: str, n: int, consumers: int) -> tuple[float, int, int]:
        seen, started = Seen(n), asyncio.Event()
        ready = False  # started.is_set(), without a call per message

        async def handle(msg: Message) -> None:
            if not ready:
                await started.wait()
            seen.add(msg.value().n)

        running = [Consumer(self.backend, topic, sub, Payload, handle, concurrency=CONCURRENCY,
                            prefetch=self.prefetch)
                   for _ in range(consumers)]
        await asyncio.gather(*(c.start() for c in running))
        started.set()
        ready = True
        try:
            await seen.wait(300)
        finally:
            await asyncio.gather(*(c.stop() for c in running))
        return seen.result()

    async def rr(self, req: str, resp: str, n: int, concurrency: int) -> list[float]:
        async def handle(request: Payload, props: dict[str, str]) -> Payload:
            return request

        responder = Responder(self.backend, req, Payload, resp, Payload, handle,
                              subscription="svc", concurrency=max(CONCURRENCY, concurrency))
        caller = RequestResponse(self.backend, req, Payload, resp, Payload)
        await responder.start()
        await caller.start()
        out: list[float] = []
        try:
            await caller.request(Payload(-1), timeout=60)

            async def one(i: int) -> None:
                t0 = time.perf_counter()
                await caller.request(Payload(i, 0.0, TEXT), timeout=60)
                out.append(time.perf_counter() - t0)

            for start in range(0, n, concurrency):
                await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
        finally:
            await caller.stop()
            await responder.stop()
        return out

    async def paced(self, topic: str, sub: str, rate: float, seconds: float) -> list[float]:
        seen = Seen(max(1, int(rate * seconds)))

        async def handle(msg: Message) -> None:
            p = msg.value()
            seen.add(p.n, p.t)

        async with Consumer(self.backend, topic, sub, Payload, handle, concurrency=CONCURRENCY,
                            prefetch=self.prefetch):
            await run_pacer(self, topic, rate, seconds)
            await seen.wait(120)
        return seen.latencies

    async def send_paced(self, topic: str, rate: float, seconds: float) -> None:
        async with Producer(self.backend, topic, Payload) as producer:

            async def send(i: int, scheduled: float) -> None:
                await producer.send(Payload(i, scheduled, TEXT))

            await pace(rate, seconds, send)
            await producer.flush()


__all__ = ["Sdk"]
