"""aiokafka, the fast way.

* produce: ``send`` (enqueue) x N, then gather the delivery futures
  (``acks=all``, ``linger_ms=0`` as the backend uses);
* consume: one group consumer per consumer, ``getmany`` batches, each
  committed once handled (aiokafka's at-least-once way, the SDK's guarantee:
  auto-commit would commit records fetched but not yet handled, so a crash
  could lose them; one round trip per batch, not per message);
* rr: one producer, a responder consumer, a caller consumer, replies
  matched by an ``id`` header;
* paced: ``send`` without awaiting the delivery, a ``getmany`` loop timing
  each message.

``fetch_max_wait_ms``, the session timeout and the heartbeat interval are
the SDK's: the trial's ``kafka_fetch_max_wait_ms`` and
``kafka_session_timeout_ms`` where it sets them, else the backend's defaults
(tansu does not wake a waiting fetch, and holds a JoinGroup for half the
session timeout: 3 s at the backend's 6 s, 5 s at aiokafka's 10 s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks.workloads import Payload, Seen, pace, payload_bytes, payloads, run_pacer, warmup
from trustgraph_pubsub import naming
from trustgraph_pubsub.backends.kafka.config import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS
from trustgraph_schema import codec


class Raw:
    name = "raw"

    def __init__(self, broker: str, config: dict[str, Any]) -> None:
        self.bootstrap = config["kafka_bootstrap_servers"]
        self.fetch_wait = int(config.get("kafka_fetch_max_wait_ms") or 5)
        self.session_timeout = int(config.get("kafka_session_timeout_ms") or SESSION_TIMEOUT_MS)

    async def close(self) -> None:
        pass

    def producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0,
                                max_request_size=2 * 1024 * 1024)

    def consumer(self, native: str, group: str, offset: str = "earliest",
                 auto_commit: bool = True) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(native, bootstrap_servers=self.bootstrap, group_id=group,
                                auto_offset_reset=offset, fetch_max_wait_ms=self.fetch_wait,
                                session_timeout_ms=self.session_timeout,
                                heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                                enable_auto_commit=auto_commit)

    async def produce(self, topic: str, n: int) -> float:
        native = naming.kafka_topic(topic)
        prod = self.producer()
        await prod.start()
        try:
            values = payloads(n)
            encode = codec.encode
            w = warmup(n)
            await asyncio.gather(*[await prod.send(native, encode(v)) for v in values[:w]])
            t0 = time.perf_counter()
            futs = [await prod.send(native, encode(v)) for v in values[w:]]
            await asyncio.gather(*futs)
            return time.perf_counter() - t0
        finally:
            await prod.stop()

    async def _drain(self, cons: AIOKafkaConsumer, seen: Seen, paced: bool) -> None:
        while not seen.done.is_set():
            batch = await cons.getmany(timeout_ms=200, max_records=500)
            for records in batch.values():
                for rec in records:
                    p = codec.decode(Payload, rec.value)
                    seen.add(p.n, p.t if paced else 0.0)
            if batch:
                await cons.commit()

    async def consume(self, topic: str, sub: str, n: int, consumers: int) -> tuple[float, int, int]:
        native, group = naming.kafka_topic(topic), naming.kafka_group(topic, sub)
        seen = Seen(n)
        members = [self.consumer(native, group, auto_commit=False) for _ in range(consumers)]
        await asyncio.gather(*(c.start() for c in members))
        try:
            await asyncio.wait_for(asyncio.gather(*(self._drain(c, seen, False) for c in members)), 300)
        finally:
            await asyncio.gather(*(c.stop() for c in members))
        return seen.result()

    async def rr(self, req: str, resp: str, n: int, concurrency: int) -> list[float]:
        req_n, resp_n = naming.kafka_topic(req), naming.kafka_topic(resp)
        prod = self.producer()
        server = self.consumer(req_n, f"{req_n}.svc", "latest")
        caller = self.consumer(resp_n, f"{resp_n}.caller-{uuid.uuid4().hex[:6]}", "latest")
        await asyncio.gather(prod.start(), server.start(), caller.start())
        waiting: dict[bytes, asyncio.Future[bytes]] = {}
        loop = asyncio.get_running_loop()

        async def serve() -> None:
            while True:
                batch = await server.getmany(timeout_ms=1000)
                for records in batch.values():
                    for rec in records:
                        p = codec.decode(Payload, rec.value)
                        await prod.send(resp_n, codec.encode(p), headers=list(rec.headers))

        async def collect() -> None:
            while True:
                batch = await caller.getmany(timeout_ms=1000)
                for records in batch.values():
                    for rec in records:
                        fut = waiting.pop(dict(rec.headers).get("id", b""), None)
                        if fut is not None and not fut.done():
                            fut.set_result(rec.value)

        tasks = [asyncio.create_task(serve()), asyncio.create_task(collect())]
        out: list[float] = []

        async def one(i: int, within: float = 60.0) -> None:
            rid = f"{i}-{uuid.uuid4().hex[:8]}".encode()
            fut = waiting[rid] = loop.create_future()
            t0 = time.perf_counter()
            await prod.send(req_n, payload_bytes(i), headers=[("id", rid)])
            codec.decode(Payload, await asyncio.wait_for(fut, within))
            out.append(time.perf_counter() - t0)

        async def joined(cons: AIOKafkaConsumer) -> None:
            # Assigned, and each partition's "latest" start resolved, so that
            # nothing sent from now on is skipped.
            for _ in range(2400):  # aiokafka tells of an assignment only to a listener
                if cons.assignment():
                    break
                await asyncio.sleep(0.05)
            for tp in cons.assignment():
                await cons.position(tp)

        try:
            # Both groups have joined and sit at the end before timing starts
            # (a warm-up lost to a join in progress is retried after 2 s).
            await asyncio.wait_for(asyncio.gather(joined(server), joined(caller)), 120)
            while True:
                try:
                    await one(-1, within=2.0)
                    break
                except TimeoutError:
                    continue
            out.clear()
            for start in range(0, n, concurrency):
                await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(prod.stop(), server.stop(), caller.stop(), return_exceptions=True)
        return out

    async def paced(self, topic: str, sub: str, rate: float, seconds: float) -> list[float]:
        native, group = naming.kafka_topic(topic), naming.kafka_group(topic, sub)
        seen = Seen(max(1, int(rate * seconds)))
        cons = self.consumer(native, group, auto_commit=False)
        await cons.start()
        drain = asyncio.create_task(self._drain(cons, seen, True))
        try:
            await run_pacer(self, topic, rate, seconds)
            await asyncio.wait_for(drain, 120)
        finally:
            drain.cancel()
            await cons.stop()
        return seen.latencies

    async def send_paced(self, topic: str, rate: float, seconds: float) -> None:
        native = naming.kafka_topic(topic)
        prod = self.producer()
        await prod.start()
        futs: list[Any] = []
        try:
            async def send(i: int, scheduled: float) -> None:
                futs.append(await prod.send(native, payload_bytes(i, scheduled)))

            await pace(rate, seconds, send)
            await asyncio.gather(*futs)
        finally:
            await prod.stop()
