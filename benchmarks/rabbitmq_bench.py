"""RabbitMQ: the SDK against raw pika, same broker, same run.

    python -m benchmarks.rabbitmq_bench [--quick]

Workloads (1 KiB payloads unless said otherwise).  Round trips of the raw and
SDK sides are interleaved in batches of 25 (the machine is shared, its load
changes by the second); throughput runs alternate raw/SDK rounds and report
medians:

* round trip: one caller sends a request and waits for its reply, one
  responder answers; sequential, so this is latency.  Raw: pika publishes the
  request, the responder's ``on_message`` publishes the reply and acks, the
  caller's ``on_message`` resolves a future.  SDK: ``RequestResponse`` +
  ``Responder`` (the full resilient stack).  Measured at q0 (classic transient
  queues, no confirms) and q1 (quorum, and classic durable queues; persistent
  messages).  At q1 the SDK publishes with pipelined confirms, so the raw
  baseline does too; raw without confirms is shown as a reference row (the
  difference is the broker's confirm work, not the SDK's);
* publish: N sends, then wait until the broker has them.  q0: raw
  ``basic_publish`` then one channel round trip, SDK ``send`` x N + ``flush``.
  q1 (confirms, pipelined): raw waits for every confirm at the end, SDK
  ``flush``.  q2 (each confirm awaited before the next send): both;
* consume: a queue pre-filled with N messages is drained with a manual ack
  per message, prefetch 100.  Raw: pika ``basic_consume`` callback.  SDK:
  the backend consumer's ``receive`` + ``acknowledge`` loop, and the
  resilient ``Consumer`` (concurrency 100) as a further row.

Raw and SDK use the same exchanges and queues (declared through the SDK, so
the queue types are the same) on one connection each.  The broker comes from
``tests.brokers.rabbitmq`` (RABBITMQ_HOST/PORT).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from benchmarks.common import median, percentile, print_table, write_results
from tests.brokers import BrokerUnavailable
from tests.brokers.rabbitmq import RabbitMQBroker
from trustgraph_pubsub import naming
from trustgraph_pubsub.backends.rabbitmq import RabbitMQBackend
from trustgraph_schema import codec
from trustgraph_schema.topic import topic


@dataclass
class Payload:
    n: int
    text: str = ""


TEXT = "x" * 1000  # about 1 KiB encoded
#: No single broker round trip or benchmark round may take longer: fail, never hang.
RPC_WAIT = 60.0
ROUND_WAIT = 300.0


# -- raw pika -----------------------------------------------------------------------


class Raw:
    """Raw pika on the asyncio adapter: a connection and callback-to-future glue."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.params = pika.ConnectionParameters(
            host=config["rabbitmq_host"],
            port=config["rabbitmq_port"],
            virtual_host=config["rabbitmq_vhost"],
            credentials=pika.PlainCredentials(
                config["rabbitmq_username"], config["rabbitmq_password"]
            ),
        )
        self.conn: Any = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def closed(_c: Any, reason: BaseException) -> None:
            print(f"  raw connection closed: {reason}", flush=True)

        AsyncioConnection(
            self.params,
            on_open_callback=fut.set_result,
            on_open_error_callback=lambda _c, e: fut.set_exception(e),
            on_close_callback=closed,
            custom_ioloop=loop,
        )
        self.conn = await fut

    async def channel(self) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ch = self.conn.channel(on_open_callback=fut.set_result)
        ch.add_on_close_callback(
            lambda _ch, reason: None if fut.done() else fut.set_exception(reason)
        )
        return await asyncio.wait_for(fut, RPC_WAIT)

    @staticmethod
    async def rpc(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        method(*args, callback=fut.set_result, **kwargs)
        return await asyncio.wait_for(fut, RPC_WAIT)

    async def close(self) -> None:
        if self.conn is not None and self.conn.is_open:
            self.conn.close()
            await asyncio.sleep(0.05)


# -- round trip ---------------------------------------------------------------------------


class RawRtt:
    """Raw pika request/reply over two topics: a caller and a callback responder."""

    def __init__(self, raw: Raw, req_t: str, resp_t: str, confirms: bool) -> None:
        self.raw, self.req_t, self.resp_t, self.confirms = raw, req_t, resp_t, confirms
        self.persistent = 1 if req_t.startswith("q0/") else 2
        self.waiting: dict[str, asyncio.Future[bytes]] = {}
        self.channels: list[Any] = []

    async def start(self) -> None:
        svc = await self.raw.channel()
        self.caller = caller = await self.raw.channel()
        self.channels = [svc, caller]
        if self.confirms:  # pipelined, never awaited: what the SDK does at q1
            await Raw.rpc(svc.confirm_delivery, lambda _f: None)
            await Raw.rpc(caller.confirm_delivery, lambda _f: None)
        await Raw.rpc(svc.basic_qos, prefetch_count=64)
        await Raw.rpc(caller.basic_qos, prefetch_count=64)
        resp_exchange = naming.rabbitmq_exchange(self.resp_t)
        persistent, waiting = self.persistent, self.waiting

        def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
            ch.basic_publish(
                resp_exchange, "", body,
                pika.BasicProperties(delivery_mode=persistent, correlation_id=props.correlation_id),
            )
            ch.basic_ack(method.delivery_tag)

        def on_reply(ch: Any, method: Any, props: Any, body: bytes) -> None:
            ch.basic_ack(method.delivery_tag)
            fut = waiting.pop(props.correlation_id, None)
            if fut is not None and not fut.done():
                fut.set_result(body)

        await Raw.rpc(svc.basic_consume, naming.rabbitmq_queue(self.req_t, "svc"), on_request)
        await Raw.rpc(caller.basic_consume, naming.rabbitmq_queue(self.resp_t, "raw"), on_reply)
        self.req_exchange = naming.rabbitmq_exchange(self.req_t)

    async def one(self, i: int) -> float:
        rid = uuid.uuid4().hex
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        t0 = time.perf_counter()
        self.caller.basic_publish(
            self.req_exchange, "", codec.encode(Payload(i, "req")),
            pika.BasicProperties(delivery_mode=self.persistent, correlation_id=rid),
        )
        codec.decode(Payload, await fut)
        return time.perf_counter() - t0

    async def stop(self) -> None:
        for ch in self.channels:
            ch.close()


class SdkRtt:
    """The SDK's ``RequestResponse`` caller and ``Responder`` service."""

    def __init__(self, backend: RabbitMQBackend, req_t: str, resp_t: str) -> None:
        from trustgraph_pubsub.request_response import RequestResponse, Responder

        async def handle(req: Payload, props: dict[str, str]) -> Payload:
            return req

        self.responder = Responder(backend, req_t, Payload, resp_t, Payload, handle,
                                   subscription="svc-sdk", concurrency=64)
        self.caller = RequestResponse(backend, req_t, Payload, resp_t, Payload)

    async def start(self) -> None:
        await self.responder.start()
        await self.caller.start()

    async def one(self, i: int) -> float:
        t0 = time.perf_counter()
        reply = await self.caller.request(Payload(i, "req"), timeout=30)
        took = time.perf_counter() - t0
        assert reply.n == i
        return took

    async def stop(self) -> None:
        await self.caller.stop()
        await self.responder.stop()


async def interleaved(sides: dict[str, Any], n: int, batch: int = 25) -> dict[str, list[float]]:
    """``n`` round trips per side, in batches taken in turn (rotating who goes first),
    so that the shared machine's changing load falls on every side alike."""
    for side in sides.values():
        await side.start()
    out: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    try:
        for b in range(n // batch):
            order = names[b % len(names):] + names[: b % len(names)]
            for k in order:
                for i in range(batch):
                    out[k].append(await sides[k].one(b * batch + i))
    finally:
        for side in sides.values():
            await side.stop()
    return out


# -- publish -------------------------------------------------------------------------------


async def raw_publish(raw: Raw, name: str, n: int, mode: str) -> float:
    ch = await raw.channel()
    exchange = naming.rabbitmq_exchange(name)
    persistent = 1 if mode == "q0" else 2
    props = pika.BasicProperties(delivery_mode=persistent)
    loop = asyncio.get_running_loop()
    acked = 0
    done: asyncio.Future[None] = loop.create_future()
    waiter: list[asyncio.Future[None]] = []

    def on_confirm(frame: Any) -> None:
        nonlocal acked
        tag = frame.method.delivery_tag
        acked = tag if frame.method.multiple else max(acked, tag)
        if acked >= n and not done.done():
            done.set_result(None)
        if waiter and not waiter[0].done():
            waiter[0].set_result(None)

    if mode != "q0":
        await Raw.rpc(ch.confirm_delivery, on_confirm)
    values = [Payload(i, TEXT) for i in range(n)]
    t0 = time.perf_counter()
    for i, value in enumerate(values, 1):
        ch.basic_publish(exchange, "", codec.encode(value), props)
        if mode == "q2":
            while acked < i:
                waiter[:] = [loop.create_future()]
                await waiter[0]
    if mode == "q0":
        await Raw.rpc(ch.basic_qos, prefetch_count=0)  # a round trip: the broker has them all
    else:
        await done
    took = time.perf_counter() - t0
    ch.close()
    return n / took


async def sdk_publish(backend: RabbitMQBackend, name: str, n: int) -> float:
    p = await backend.create_producer(name, Payload)
    values = [Payload(i, TEXT) for i in range(n)]
    t0 = time.perf_counter()
    for v in values:
        await p.send(v)
    await p.flush()
    took = time.perf_counter() - t0
    await p.close()
    return n / took


# -- consume -----------------------------------------------------------------------------------


async def fill(raw: Raw, name: str, n: int) -> None:
    """Put exactly ``n`` messages in the subscription queue(s) of ``name``.

    Not timed.  Publishes with confirms and publishes again whatever the broker
    nacks (a loaded quorum queue may), so a consume run never waits for
    messages that were refused.
    """
    ch = await raw.channel()
    loop = asyncio.get_running_loop()
    pending: dict[int, int] = {}  # publish sequence -> message number
    refused: list[int] = []
    drained: asyncio.Future[None] = loop.create_future()
    seq = 0

    def on_confirm(frame: Any) -> None:
        m = frame.method
        tags = [t for t in pending if t <= m.delivery_tag] if m.multiple else [m.delivery_tag]
        for t in tags:
            i = pending.pop(t, None)
            if i is not None and isinstance(m, pika.spec.Basic.Nack):
                refused.append(i)
        if not pending and not drained.done():
            drained.set_result(None)

    await Raw.rpc(ch.confirm_delivery, on_confirm)
    exchange = naming.rabbitmq_exchange(name)
    props = pika.BasicProperties(delivery_mode=1 if name.startswith("q0/") else 2)
    todo = list(range(n))
    while todo:
        drained = loop.create_future()
        for i in todo:
            seq += 1
            pending[seq] = i
            ch.basic_publish(exchange, "", codec.encode(Payload(i, TEXT)), props)
            if seq % 1000 == 0:
                await Raw.rpc(ch.basic_qos, prefetch_count=0)
        if pending:
            try:
                await asyncio.wait_for(drained, RPC_WAIT)
            except TimeoutError:
                raise RuntimeError(f"fill {name}: {len(pending)} publishes never confirmed") from None
        todo, refused[:] = list(refused), []
    ch.close()
    await asyncio.sleep(0.5)  # let the queue settle (quorum queues write behind)


async def raw_consume(raw: Raw, name: str, sub: str, n: int, prefetch: int) -> float:
    ch = await raw.channel()
    await Raw.rpc(ch.basic_qos, prefetch_count=prefetch)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    got = 0

    def on_message(c: Any, method: Any, props: Any, body: bytes) -> None:
        nonlocal got
        codec.decode(Payload, body)
        c.basic_ack(method.delivery_tag)
        got += 1
        if got >= n and not done.done():
            done.set_result(None)

    t0 = time.perf_counter()
    await Raw.rpc(ch.basic_consume, naming.rabbitmq_queue(name, sub), on_message)
    try:
        await asyncio.wait_for(done, ROUND_WAIT)
    except TimeoutError:
        raise RuntimeError(f"raw consumer got {got} of {n} from {name}") from None
    took = time.perf_counter() - t0
    ch.close()
    return n / took


async def sdk_consume(backend: RabbitMQBackend, name: str, sub: str, n: int, prefetch: int) -> float:
    t0 = time.perf_counter()
    c = await backend.create_consumer(name, sub, Payload, prefetch=prefetch)
    for i in range(n):
        try:
            msg = await c.receive(timeout=RPC_WAIT)
        except Exception as exc:
            raise RuntimeError(f"SDK consumer got {i} of {n} from {name}: {exc}") from exc
        msg.value()
        await c.acknowledge(msg)
    took = time.perf_counter() - t0
    await c.close()
    return n / took


async def sdk_consumer_class(
    backend: RabbitMQBackend, name: str, sub: str, n: int, prefetch: int
) -> float:
    from trustgraph_pubsub.consumer import Consumer

    got = 0
    done = asyncio.Event()

    async def handler(msg: Any) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    t0 = time.perf_counter()
    consumer = Consumer(backend, name, sub, Payload, handler, concurrency=prefetch)
    await consumer.start()
    try:
        await asyncio.wait_for(done.wait(), 300)
    except TimeoutError:
        raise RuntimeError(
            f"Consumer handled {got} of {n} in 300s: {consumer!r}, "
            f"backend consumer {getattr(consumer, '_bc', None)!r}"
        ) from None
    took = time.perf_counter() - t0
    await consumer.stop()
    return n / took


# -- driver --------------------------------------------------------------------------------------


async def alternate(
    rounds: int,
    raw: Callable[[int], Awaitable[Any]],
    sdk: Callable[[int], Awaitable[Any]],
    what: str = "",
) -> tuple[list[Any], list[Any]]:
    """Run raw, SDK, raw, SDK ... so load on the shared machine hits both alike."""
    raws: list[Any] = []
    sdks: list[Any] = []
    t0 = time.monotonic()
    for r in range(rounds):
        for side, fn, out in (("raw", raw, raws), ("sdk", sdk, sdks)):
            gc.collect()
            try:
                out.append(await asyncio.wait_for(fn(r), ROUND_WAIT))
            except TimeoutError:
                raise RuntimeError(f"{what}: {side} round {r} took over {ROUND_WAIT}s") from None
    print(f"  {what}: {rounds} rounds in {time.monotonic() - t0:.1f}s", flush=True)
    return raws, sdks


async def main(quick: bool) -> None:
    broker = RabbitMQBroker()
    try:
        broker.start()
    except BrokerUnavailable as exc:
        raise SystemExit(f"benchmark needs RabbitMQ: {exc}") from exc
    config = broker.backend_config()
    rounds = 3 if quick else 5
    rtt_n = 300 if quick else 1500
    pub_n = 3000 if quick else 10000
    q2_n = 300 if quick else 1000
    con_n = 3000 if quick else 10000
    prefetch = 100
    uid = uuid.uuid4().hex[:8]
    backend = broker.make_backend()
    assert isinstance(backend, RabbitMQBackend)
    raw = Raw(config)
    await raw.connect()
    made: list[str] = []

    def name(label: str, qos: str) -> str:
        t = topic(f"bench-{uid}-{label}", qos=qos, tenant="tg", namespace="bench")
        made.append(t)
        return t

    rows: list[list[Any]] = []
    results: dict[str, Any] = {"rounds": rounds, "quick": quick}
    try:
        # Round trip: raw and SDK on their own topics of the same kind, so neither
        # side's queues collect the other's traffic; measured interleaved in small
        # batches.  At q1 the like-for-like raw baseline publishes with pipelined
        # confirms, as the SDK does; raw without confirms is a reference row.
        classic = broker.make_backend(rabbitmq_queue_type="classic")
        assert isinstance(classic, RabbitMQBackend)
        try:
            for label, qos, b in (("q0", "q0", backend), ("q1 quorum", "q1", backend),
                                  ("q1 classic", "q1", classic)):
                key = label.replace(" ", "-")
                sides: dict[str, Any] = {}
                topics: list[str] = []
                kinds = ("raw", "sdk") if qos == "q0" else ("raw", "plain", "sdk")
                for kind in kinds:
                    req, resp = name(f"{kind}req-{key}", qos), name(f"{kind}resp-{key}", qos)
                    topics += [req, resp]
                    if kind == "sdk":
                        sides[kind] = SdkRtt(b, req, resp)
                    else:
                        await b.create_queue(req, "svc")
                        await b.create_queue(resp, "raw")
                        sides[kind] = RawRtt(raw, req, resp, confirms=qos != "q0" and kind == "raw")
                t0 = time.monotonic()
                lat = await interleaved(sides, rtt_n)
                print(f"  round trip {label}: {time.monotonic() - t0:.1f}s", flush=True)
                for stat, p in (("p50", 50), ("p99", 99)):
                    r = percentile(lat["raw"], p) * 1000
                    s = percentile(lat["sdk"], p) * 1000
                    tag = " (raw with confirms)" if qos != "q0" else ""
                    rows.append([f"round trip {label} {stat} ms{tag}", r, s, s / r])
                    results[f"rtt_{key}_{stat}_ms"] = {"raw": r, "sdk": s, "ratio": s / r}
                    if "plain" in lat:
                        r0 = percentile(lat["plain"], p) * 1000
                        rows.append([f"  ref: raw without confirms {stat} ms", r0, s, s / r0])
                        results[f"rtt_{key}_{stat}_ms"]["raw_no_confirms"] = r0
                if b is classic:
                    for t in topics:
                        await classic.delete_queue(t)
        finally:
            await classic.close()

        # Publish.
        for mode, n in (("q0", pub_n), ("q1", pub_n), ("q2", q2_n)):
            t = name(f"pub-{mode}", mode)
            await backend.create_queue(t, "sink")
            async def raw_side_p(_r: int, t: str = t, mode: str = mode, n: int = n) -> float:
                return await raw_publish(raw, t, n, mode)

            async def sdk_side_p(_r: int, t: str = t, n: int = n) -> float:
                return await sdk_publish(backend, t, n)

            raw_r, sdk_r = await alternate(rounds, raw_side_p, sdk_side_p, f"publish {mode}")
            label = {"q0": "no confirms", "q1": "confirms pipelined", "q2": "confirm awaited"}[mode]
            r, s = median(raw_r), median(sdk_r)
            rows.append([f"publish {mode} {label} (msg/s)", r, s, s / r])
            results[f"publish_{mode}_per_s"] = {"raw": r, "sdk": s, "ratio": s / r}
            await backend.delete_queue(t)

        # Consume: every run drains its own freshly filled queue, so no run pays
        # for another's fill (quorum queues keep writing for a while after one).
        for qos in ("q0", "q1"):
            async def filled(side: str, k: int, qos: str = qos) -> str:
                t = name(f"con-{qos}-{side}{k}", qos)
                await backend.create_queue(t, "c")
                await fill(raw, t, con_n)
                return t

            async def raw_side_c(k: int) -> float:
                return await raw_consume(raw, await filled("r", k), "c", con_n, prefetch)

            async def sdk_side_c(k: int) -> float:
                return await sdk_consume(backend, await filled("s", k), "c", con_n, prefetch)

            raw_r, sdk_r = await alternate(rounds, raw_side_c, sdk_side_c, f"consume {qos}")
            cls_r = []
            for k in range(rounds):
                t = await filled("c", k)
                gc.collect()
                cls_r.append(await sdk_consumer_class(backend, t, "c", con_n, prefetch))
            r, s, c = median(raw_r), median(sdk_r), median(cls_r)
            rows.append([f"consume {qos} prefetch {prefetch} (msg/s)", r, s, s / r])
            rows.append([f"consume {qos} via Consumer (msg/s)", r, c, c / r])
            results[f"consume_{qos}_per_s"] = {"raw": r, "sdk": s, "ratio": s / r}
            results[f"consume_{qos}_consumer_per_s"] = {"raw": r, "sdk": c, "ratio": c / r}
    finally:
        for t in made:
            try:
                await backend.delete_queue(t)
            except Exception as exc:  # clean-up is best effort
                print(f"clean-up {t}: {exc}")
        await raw.close()
        await backend.close()

    title = (f"RabbitMQ: SDK vs raw pika (RTT: n={rtt_n} per side, interleaved in batches of 25; "
             f"throughput: median of {rounds} alternating rounds, publish n={pub_n}/{q2_n}, "
             f"consume n={con_n})")
    print_table(title, ["workload", "raw", "sdk", "sdk/raw"], rows)
    write_results("rabbitmq", results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    asyncio.run(main(args.quick))
