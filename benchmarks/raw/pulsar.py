"""pulsar-client, the fast way: the synchronous client's calls in worker threads.

* produce: ``send_async`` without a callback (one Python callback per message
  costs most of the client's rate), batching on, then ``flush``;
* consume: per consumer, a thread looping ``receive`` + ``acknowledge``,
  receiver queue 1,000 (the fastest way to drive the client);
* rr: ``pulsar.asyncio`` producers with batching off (an awaited batched
  send waits out the batching delay) and consumers, replies matched by an
  ``id`` property;
* paced: ``send_async`` from the loop, a receiving thread timing each message.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pulsar
import pulsar.asyncio as pulsar_asyncio

from benchmarks.workloads import Payload, Seen, pace, payload_bytes, payloads, run_pacer, warmup
from trustgraph_pubsub import naming
from trustgraph_schema import codec


def _logger() -> Any:
    return pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)


class Raw:
    name = "raw"

    def __init__(self, broker: str, config: dict[str, Any]) -> None:
        self.url = config["pulsar_host"]
        self.client = pulsar.Client(self.url, logger=_logger())

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)

    async def produce(self, topic: str, n: int) -> float:
        def run() -> float:
            p = self.client.create_producer(naming.pulsar_topic(topic), batching_enabled=True,
                                            max_pending_messages=n + 1, block_if_queue_full=True)
            values = payloads(n)
            encode = codec.encode
            w = warmup(n)
            for v in values[:w]:
                p.send_async(encode(v), None)
            p.flush()
            t0 = time.perf_counter()
            for v in values[w:]:
                p.send_async(encode(v), None)
            p.flush()
            took = time.perf_counter() - t0
            p.close()
            return took

        return await asyncio.to_thread(run)

    def _drain(self, loop: asyncio.AbstractEventLoop, topic: str, sub: str, seen: Seen,
               stop: threading.Event, paced: bool) -> None:
        c = self.client.subscribe(naming.pulsar_topic(topic), sub,
                                  consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=1000)
        try:
            while not stop.is_set():
                try:
                    msg = c.receive(200)
                except pulsar.Timeout:
                    continue
                p = codec.decode(Payload, msg.data())
                c.acknowledge(msg)
                seen.add_threadsafe(loop, p.n, p.t if paced else 0.0)
        finally:
            c.close()

    async def consume(self, topic: str, sub: str, n: int, consumers: int) -> tuple[float, int, int]:
        seen, stop = Seen(n), threading.Event()
        loop = asyncio.get_running_loop()
        threads = [asyncio.to_thread(self._drain, loop, topic, sub, seen, stop, False)
                   for _ in range(consumers)]
        tasks = [asyncio.ensure_future(t) for t in threads]
        try:
            await seen.wait(300)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        return seen.result()

    async def rr(self, req: str, resp: str, n: int, concurrency: int) -> list[float]:
        client = pulsar_asyncio.Client(self.url, logger=_logger())
        shared = pulsar.ConsumerType.Shared
        svc = await client.subscribe(naming.pulsar_topic(req), "svc", consumer_type=shared)
        caller = await client.subscribe(naming.pulsar_topic(resp), "caller", consumer_type=shared)
        req_p = await client.create_producer(naming.pulsar_topic(req), batching_enabled=False)
        resp_p = await client.create_producer(naming.pulsar_topic(resp), batching_enabled=False)
        waiting: dict[str, asyncio.Future[bytes]] = {}

        async def serve() -> None:
            while True:
                msg = await svc.receive()
                request = codec.decode(Payload, msg.data())
                await svc.acknowledge(msg)
                await resp_p.send(codec.encode(request), properties={"id": msg.properties()["id"]})

        async def collect() -> None:
            while True:
                msg = await caller.receive()
                await caller.acknowledge(msg)
                fut = waiting.pop(msg.properties()["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg.data())

        tasks = [asyncio.create_task(serve()), asyncio.create_task(collect())]
        out: list[float] = []
        loop = asyncio.get_running_loop()

        async def one(i: int) -> None:
            rid = str(i)
            fut = waiting[rid] = loop.create_future()
            t0 = time.perf_counter()
            await req_p.send(payload_bytes(i), properties={"id": rid})
            codec.decode(Payload, await asyncio.wait_for(fut, 60))
            out.append(time.perf_counter() - t0)

        try:
            await one(-1)
            out.clear()
            for start in range(0, n, concurrency):
                await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
        finally:
            for t in tasks:
                t.cancel()
            for c in (req_p, resp_p, svc, caller):
                await c.close()
            await client.close()
        return out

    async def paced(self, topic: str, sub: str, rate: float, seconds: float) -> list[float]:
        seen, stop = Seen(max(1, int(rate * seconds))), threading.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(asyncio.to_thread(self._drain, loop, topic, sub, seen, stop, True))
        try:
            await run_pacer(self, topic, rate, seconds)
            await seen.wait(120)
        finally:
            stop.set()
            await task
        return seen.latencies

    async def send_paced(self, topic: str, rate: float, seconds: float) -> None:
        p = self.client.create_producer(naming.pulsar_topic(topic), batching_enabled=True,
                                        block_if_queue_full=True)

        async def send(i: int, scheduled: float) -> None:
            p.send_async(payload_bytes(i, scheduled), None)

        await pace(rate, seconds, send)
        await asyncio.to_thread(p.flush)
        p.close()
