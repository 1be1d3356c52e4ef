"""pika on its asyncio adapter, the fast way.

* produce: ``basic_publish`` x N with publisher confirms, pipelined (q1: what
  the SDK does), the clock stopping at the last confirm;
* consume: per consumer a channel, prefetch 100, ``basic_consume`` callback,
  one ``basic_ack`` per message after handling;
* rr: a responder callback publishing the reply, a caller callback resolving
  a future by ``correlation_id``; queues declared as the SDK declares q1
  ones (durable, quorum);
* paced: confirms pipelined, a consumer callback timing each message.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from benchmarks.workloads import Payload, Seen, pace, payload_bytes, payloads, run_pacer, warmup
from trustgraph_pubsub import naming
from trustgraph_schema import codec

WAIT = 60.0
PREFETCH = 100


async def _rpc(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    method(*args, callback=lambda *a: fut.done() or fut.set_result(a[0] if a else None), **kwargs)
    return await asyncio.wait_for(fut, WAIT)


class Raw:
    name = "raw"

    def __init__(self, broker: str, config: dict[str, Any]) -> None:
        self.params = pika.ConnectionParameters(
            host=config.get("rabbitmq_host") or "127.0.0.1",
            port=int(config.get("rabbitmq_port") or 5672),
            virtual_host=config.get("rabbitmq_vhost") or "/",
            credentials=pika.PlainCredentials(config.get("rabbitmq_username") or "guest",
                                              config.get("rabbitmq_password") or "guest"),
        )
        self.queue_type = config.get("rabbitmq_queue_type") or "quorum"
        self.conn: Any = None

    async def _conn(self) -> Any:
        if self.conn is None:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[Any] = loop.create_future()
            AsyncioConnection(self.params, on_open_callback=fut.set_result,
                              on_open_error_callback=lambda _c, e: fut.set_exception(e),
                              custom_ioloop=loop)
            self.conn = await asyncio.wait_for(fut, WAIT)
        return self.conn

    async def channel(self) -> Any:
        conn = await self._conn()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.channel(on_open_callback=fut.set_result)
        return await asyncio.wait_for(fut, WAIT)

    async def close(self) -> None:
        if self.conn is not None and self.conn.is_open:
            self.conn.close()
            await asyncio.sleep(0.05)

    async def _publisher(self) -> tuple[Any, Callable[[], int], asyncio.Event, list[int]]:
        """A confirming channel: (channel, confirmed count, an event set on each confirm)."""
        ch = await self.channel()
        acked = [0]
        event = asyncio.Event()

        def on_confirm(frame: Any) -> None:
            tag = frame.method.delivery_tag
            acked[0] = tag if frame.method.multiple else max(acked[0], tag)
            event.set()

        await _rpc(ch.confirm_delivery, on_confirm)
        return ch, lambda: acked[0], event, acked

    async def produce(self, topic: str, n: int) -> float:
        ch, acked, event, _ = await self._publisher()
        exchange = naming.rabbitmq_exchange(topic)
        props = pika.BasicProperties(delivery_mode=2)
        values = payloads(n)
        encode = codec.encode
        w = warmup(n)

        async def until(count: int) -> None:
            while acked() < count:
                event.clear()
                await asyncio.wait_for(event.wait(), WAIT)

        for v in values[:w]:
            ch.basic_publish(exchange, "", encode(v), props)
        await until(w)
        t0 = time.perf_counter()
        for v in values[w:]:
            ch.basic_publish(exchange, "", encode(v), props)
        await until(n)
        took = time.perf_counter() - t0
        ch.close()
        return took

    async def _consume(self, queue: str, seen: Seen, paced: bool) -> Any:
        ch = await self.channel()
        await _rpc(ch.basic_qos, prefetch_count=PREFETCH)

        def on_message(c: Any, method: Any, props: Any, body: bytes) -> None:
            p = codec.decode(Payload, body)
            c.basic_ack(method.delivery_tag)
            seen.add(p.n, p.t if paced else 0.0)

        await _rpc(ch.basic_consume, queue, on_message)
        return ch

    async def consume(self, topic: str, sub: str, n: int, consumers: int) -> tuple[float, int, int]:
        seen = Seen(n)
        queue = naming.rabbitmq_queue(topic, sub)
        channels = [await self._consume(queue, seen, False) for _ in range(consumers)]
        try:
            await seen.wait(300)
        finally:
            for ch in channels:
                ch.close()
        return seen.result()

    async def _declare(self, ch: Any, topic: str, sub: str) -> str:
        exchange, queue = naming.rabbitmq_exchange(topic), naming.rabbitmq_queue(topic, sub)
        await _rpc(ch.exchange_declare, exchange, exchange_type="fanout", durable=True)
        await _rpc(ch.queue_declare, queue, durable=True,
                   arguments={"x-queue-type": self.queue_type})
        await _rpc(ch.queue_bind, queue, exchange)
        return queue

    async def rr(self, req: str, resp: str, n: int, concurrency: int) -> list[float]:
        svc, caller = await self.channel(), await self.channel()
        for ch in (svc, caller):
            await _rpc(ch.confirm_delivery, lambda _f: None)  # pipelined, as the SDK at q1
            await _rpc(ch.basic_qos, prefetch_count=max(64, concurrency))
        svc_q = await self._declare(svc, req, "svc")
        caller_q = await self._declare(caller, resp, f"caller-{uuid.uuid4().hex[:6]}")
        resp_x, req_x = naming.rabbitmq_exchange(resp), naming.rabbitmq_exchange(req)
        waiting: dict[str, asyncio.Future[bytes]] = {}

        def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
            p = codec.decode(Payload, body)
            ch.basic_publish(resp_x, "", codec.encode(p),
                             pika.BasicProperties(delivery_mode=2, correlation_id=props.correlation_id))
            ch.basic_ack(method.delivery_tag)

        def on_reply(ch: Any, method: Any, props: Any, body: bytes) -> None:
            ch.basic_ack(method.delivery_tag)
            fut = waiting.pop(props.correlation_id, None)
            if fut is not None and not fut.done():
                fut.set_result(body)

        await _rpc(svc.basic_consume, svc_q, on_request)
        await _rpc(caller.basic_consume, caller_q, on_reply)
        loop = asyncio.get_running_loop()
        out: list[float] = []

        async def one(i: int) -> None:
            rid = uuid.uuid4().hex
            fut = waiting[rid] = loop.create_future()
            t0 = time.perf_counter()
            caller.basic_publish(req_x, "", payload_bytes(i),
                                 pika.BasicProperties(delivery_mode=2, correlation_id=rid))
            codec.decode(Payload, await asyncio.wait_for(fut, WAIT))
            out.append(time.perf_counter() - t0)

        try:
            await one(-1)
            out.clear()
            for start in range(0, n, concurrency):
                await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
        finally:
            await _rpc(caller.queue_delete, caller_q)
            svc.close()
            caller.close()
        return out

    async def paced(self, topic: str, sub: str, rate: float, seconds: float) -> list[float]:
        seen = Seen(max(1, int(rate * seconds)))
        ch = await self._consume(naming.rabbitmq_queue(topic, sub), seen, True)
        try:
            await run_pacer(self, topic, rate, seconds)
            await seen.wait(120)
        finally:
            ch.close()
        return seen.latencies

    async def send_paced(self, topic: str, rate: float, seconds: float) -> None:
        ch, acked, event, _ = await self._publisher()
        exchange = naming.rabbitmq_exchange(topic)
        props = pika.BasicProperties(delivery_mode=2)

        async def send(i: int, scheduled: float) -> None:
            ch.basic_publish(exchange, "", payload_bytes(i, scheduled), props)

        n = await pace(rate, seconds, send)
        while acked() < n:
            event.clear()
            await asyncio.wait_for(event.wait(), WAIT)
        ch.close()
