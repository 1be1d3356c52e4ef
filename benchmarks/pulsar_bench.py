"""Pulsar: the SDK against raw pulsar-client, same broker, same run.

    python -m benchmarks.pulsar_bench [--quick]

Workloads (1 KiB payloads, encoded and decoded with the project's codec on
both sides), each run as alternating raw/SDK rounds whose medians are
reported:

* round trip: one caller sends a request and waits for its reply, one
  responder answers; sequential, so this is latency.  Raw: ``pulsar.asyncio``
  producers with batching off (the raw client's own lesson: awaiting a
  batched send waits out the 10 ms batching delay), each send awaited, the
  responder a task doing receive / ack / send.  SDK: ``RequestResponse`` +
  ``Responder`` (the full resilient stack).  A reference row shows the raw
  client with its asyncio default (batching on);
* publish: N sends, then everything confirmed.  Raw: the synchronous client's
  ``send_async`` without a callback, then ``flush``, batching on, in a worker
  thread (``max_pending_messages`` raised to N: at the default 1,000 the
  client silently drops what does not fit).  SDK: ``send`` x N + ``flush``;
* consume: a subscription with N messages waiting is drained, one ack per
  message, receiver queue 1,000.  Raw: the synchronous client's ``receive``
  + ``acknowledge`` loop in a worker thread (the fastest way to drive the
  client); a reference row shows ``pulsar.asyncio``'s ``receive`` +
  ``acknowledge``.  SDK: the backend consumer's ``receive`` +
  ``acknowledge`` loop, and the resilient ``Consumer`` (concurrency 100) as
  a further row.  pulsar-lite delivers duplicates when
  a large backlog drains (quirk ``duplicates-under-load``): both sides stop
  when every id was seen, and the duplicates are reported.

The broker comes from ``tests.brokers.pulsar`` (pulsar-lite on a free port,
or ``TG_PULSAR_URL``).
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

import pulsar
import pulsar.asyncio as pulsar_asyncio

from benchmarks.common import median, percentile, print_table, write_results
from tests.brokers import BrokerUnavailable
from tests.brokers.pulsar import PulsarBroker
from trustgraph_pubsub import naming
from trustgraph_pubsub.backends.pulsar import PulsarBackend
from trustgraph_schema import codec
from trustgraph_schema.topic import topic


@dataclass
class Payload:
    n: int
    text: str = ""


TEXT = "x" * 1000  # about 1 KiB encoded


def quiet() -> Any:
    """The raw clients log as the backend's does: WARN and above, straight to stderr."""
    return pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)


# -- round trip ----------------------------------------------------------------------


async def raw_rtt(client: Any, req_t: str, resp_t: str, n: int, batching: bool) -> list[float]:
    req_native, resp_native = naming.pulsar_topic(req_t), naming.pulsar_topic(resp_t)
    svc = await client.subscribe(req_native, "svc", consumer_type=pulsar.ConsumerType.Shared)
    caller = await client.subscribe(resp_native, "caller", consumer_type=pulsar.ConsumerType.Shared)
    req_p = await client.create_producer(req_native, batching_enabled=batching)
    resp_p = await client.create_producer(resp_native, batching_enabled=batching)

    async def responder() -> None:
        while True:
            msg = await svc.receive()
            req = codec.decode(Payload, msg.data())
            await svc.acknowledge(msg)
            await resp_p.send(codec.encode(Payload(req.n, "resp")),
                              properties={"id": msg.properties()["id"]})

    task = asyncio.create_task(responder())
    out: list[float] = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            await req_p.send(codec.encode(Payload(i, "req")), properties={"id": str(i)})
            reply = await caller.receive()
            await caller.acknowledge(reply)
            value = codec.decode(Payload, reply.data())
            out.append(time.perf_counter() - t0)
            assert value.n == i and reply.properties()["id"] == str(i)
    finally:
        task.cancel()
        for closeable in (req_p, resp_p, svc, caller):
            await closeable.close()
    return out


async def sdk_rtt(backend: PulsarBackend, req_t: str, resp_t: str, n: int) -> list[float]:
    from trustgraph_pubsub.request_response import RequestResponse, Responder

    async def handle(req: Payload, props: dict[str, str]) -> Payload:
        return Payload(req.n, "resp")

    responder = Responder(backend, req_t, Payload, resp_t, Payload, handle,
                          subscription="svc-sdk", concurrency=64)
    caller = RequestResponse(backend, req_t, Payload, resp_t, Payload)
    await responder.start()
    await caller.start()
    out: list[float] = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            reply = await caller.request(Payload(i, "req"), timeout=30)
            out.append(time.perf_counter() - t0)
            assert reply.n == i
    finally:
        await caller.stop()
        await responder.stop()
    return out


# -- publish ---------------------------------------------------------------------------


def raw_publish_sync(client: Any, name: str, n: int) -> float:
    p = client.create_producer(naming.pulsar_topic(name), batching_enabled=True,
                               max_pending_messages=n + 1, block_if_queue_full=True)
    values = [Payload(i, TEXT) for i in range(n)]
    t0 = time.perf_counter()
    for v in values:
        p.send_async(codec.encode(v), None)
    p.flush()
    took = time.perf_counter() - t0
    p.close()
    return n / took


async def sdk_publish(backend: PulsarBackend, name: str, n: int) -> float:
    p = await backend.create_producer(name, Payload)
    values = [Payload(i, TEXT) for i in range(n)]
    t0 = time.perf_counter()
    for v in values:
        await p.send(v)
    await p.flush()
    took = time.perf_counter() - t0
    await p.close()
    return n / took


# -- consume ---------------------------------------------------------------------------


async def filled(backend: PulsarBackend, name: str, sub: str, n: int) -> None:
    """A subscription with ``n`` messages waiting (made before the messages are sent)."""
    await backend.ensure_queue(name, sub)
    p = await backend.create_producer(name, Payload)
    for i in range(n):
        await p.send(Payload(i, TEXT))
    await p.close()


def raw_consume_sync(client: Any, name: str, sub: str, n: int) -> tuple[float, int]:
    c = client.subscribe(naming.pulsar_topic(name), sub, consumer_type=pulsar.ConsumerType.Shared,
                         receiver_queue_size=1000)
    seen: set[int] = set()
    total = 0
    t0 = time.perf_counter()
    while len(seen) < n:
        msg = c.receive(30_000)
        seen.add(codec.decode(Payload, msg.data()).n)
        c.acknowledge(msg)
        total += 1
    took = time.perf_counter() - t0
    c.close()
    return n / took, total - n


async def raw_consume_asyncio(client: Any, name: str, sub: str, n: int) -> tuple[float, int]:
    c = await client.subscribe(naming.pulsar_topic(name), sub,
                               consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=1000)
    seen: set[int] = set()
    total = 0
    t0 = time.perf_counter()
    while len(seen) < n:
        msg = await c.receive()
        seen.add(codec.decode(Payload, msg.data()).n)
        await c.acknowledge(msg)
        total += 1
    took = time.perf_counter() - t0
    await c.close()
    return n / took, total - n


async def sdk_consume(backend: PulsarBackend, name: str, sub: str, n: int) -> tuple[float, int]:
    c = await backend.create_consumer(name, sub, Payload, prefetch=1000)
    seen: set[int] = set()
    total = 0
    t0 = time.perf_counter()
    while len(seen) < n:
        msg = await c.receive(timeout=30)
        seen.add(msg.value().n)
        await c.acknowledge(msg)
        total += 1
    took = time.perf_counter() - t0
    await c.close()
    return n / took, total - n


async def sdk_consumer_class(backend: PulsarBackend, name: str, sub: str, n: int) -> tuple[float, int]:
    from trustgraph_pubsub.consumer import Consumer

    seen: set[int] = set()
    total = 0
    done = asyncio.Event()

    async def handler(msg: Any) -> None:
        nonlocal total
        seen.add(msg.value().n)
        total += 1
        if len(seen) >= n:
            done.set()

    t0 = time.perf_counter()
    consumer = Consumer(backend, name, sub, Payload, handler, concurrency=100)
    await consumer.start()
    await asyncio.wait_for(done.wait(), 120)
    took = time.perf_counter() - t0
    await consumer.stop()
    return n / took, total - n


# -- driver ----------------------------------------------------------------------------


async def alternate(
    rounds: int, raw: Callable[[int], Awaitable[Any]], sdk: Callable[[int], Awaitable[Any]]
) -> tuple[list[Any], list[Any]]:
    """Run raw, SDK, raw, SDK ... so load on the shared machine hits both alike."""
    raws, sdks = [], []
    for r in range(rounds):
        gc.collect()
        raws.append(await raw(r))
        gc.collect()
        sdks.append(await sdk(r))
    return raws, sdks


async def main(quick: bool) -> None:
    broker = PulsarBroker()
    try:
        broker.start()
    except BrokerUnavailable as exc:
        raise SystemExit(f"benchmark needs a Pulsar broker: {exc}") from exc
    rounds = 3
    rtt_n = 300 if quick else 2000
    batched_n = 50 if quick else 200
    stream_n = 20_000
    uid = uuid.uuid4().hex[:8]
    url = broker.backend_config()["pulsar_host"]
    backend = broker.make_backend()
    assert isinstance(backend, PulsarBackend)
    aclient = await asyncio.to_thread(pulsar_asyncio.Client, url, logger=quiet())
    sclient = await asyncio.to_thread(pulsar.Client, url, logger=quiet())

    def name(label: str) -> str:
        return topic(f"bench-{uid}-{label}", qos="q1", tenant="tg", namespace="bench")

    rows: list[list[Any]] = []
    results: dict[str, Any] = {"rounds": rounds, "quick": quick, "broker": "pulsar-lite"
                               if not broker.external else "external"}
    try:
        # Round trip: raw and SDK on their own topics.
        async def raw_side(r: int) -> list[float]:
            return await raw_rtt(aclient, name(f"rreq{r}"), name(f"rresp{r}"), rtt_n, False)

        async def sdk_side(r: int) -> list[float]:
            return await sdk_rtt(backend, name(f"sreq{r}"), name(f"sresp{r}"), rtt_n)

        raw_lat, sdk_lat = await alternate(rounds, raw_side, sdk_side)
        batched = await raw_rtt(aclient, name("breq"), name("bresp"), batched_n, True)
        for stat, p in (("p50", 50), ("p99", 99)):
            r = median([percentile(x, p) for x in raw_lat]) * 1000
            s = median([percentile(x, p) for x in sdk_lat]) * 1000
            b = percentile(batched, p) * 1000
            rows.append([f"round trip {stat} ms", r, s, s / r])
            rows.append([f"  ref: raw asyncio default (batching on) {stat} ms", b, s, s / b])
            results[f"rtt_{stat}_ms"] = {"raw": r, "sdk": s, "ratio": s / r, "raw_batched": b}

        # Publish: 20k messages, everything confirmed at the end.
        async def raw_side_p(r: int) -> float:
            return await asyncio.to_thread(raw_publish_sync, sclient, name(f"rpub{r}"), stream_n)

        async def sdk_side_p(r: int) -> float:
            return await sdk_publish(backend, name(f"spub{r}"), stream_n)

        raw_r, sdk_r = await alternate(rounds, raw_side_p, sdk_side_p)
        r, s = median(raw_r), median(sdk_r)
        rows.append([f"publish {stream_n} (msg/s)", r, s, s / r])
        results["publish_per_s"] = {"raw": r, "sdk": s, "ratio": s / r, "n": stream_n}

        # Consume: every run drains its own freshly filled subscription.
        async def raw_side_c(k: int) -> tuple[float, int]:
            t = name(f"rcon{k}")
            await filled(backend, t, "c", stream_n)
            return await asyncio.to_thread(raw_consume_sync, sclient, t, "c", stream_n)

        async def sdk_side_c(k: int) -> tuple[float, int]:
            t = name(f"scon{k}")
            await filled(backend, t, "c", stream_n)
            return await sdk_consume(backend, t, "c", stream_n)

        raw_c, sdk_c = await alternate(rounds, raw_side_c, sdk_side_c)
        rawa_c = []
        for k in range(rounds):
            t = name(f"acon{k}")
            await filled(backend, t, "c", stream_n)
            gc.collect()
            rawa_c.append(await raw_consume_asyncio(aclient, t, "c", stream_n))
        cls_c = []
        for k in range(rounds):
            t = name(f"ccon{k}")
            await filled(backend, t, "c", stream_n)
            gc.collect()
            cls_c.append(await sdk_consumer_class(backend, t, "c", stream_n))
        r, s, c, ra = (median([x[0] for x in v]) for v in (raw_c, sdk_c, cls_c, rawa_c))
        dups = {side: [x[1] for x in v] for side, v in (("raw", raw_c), ("sdk", sdk_c),
                                                         ("consumer", cls_c), ("raw_asyncio", rawa_c))}
        rows.append([f"consume {stream_n} (msg/s)", r, s, s / r])
        rows.append([f"consume {stream_n} via Consumer (msg/s)", r, c, c / r])
        rows.append(["  ref: raw pulsar.asyncio receive/ack (msg/s)", ra, s, s / ra])
        results["consume_per_s"] = {"raw": r, "sdk": s, "ratio": s / r, "n": stream_n,
                                    "raw_asyncio": ra}
        results["consume_consumer_per_s"] = {"raw": r, "sdk": c, "ratio": c / r}
        results["consume_duplicates"] = dups
    finally:
        await backend.close()
        await aclient.close()
        await asyncio.to_thread(sclient.close)
        broker.stop()

    title = (f"Pulsar: SDK vs raw pulsar-client (median of {rounds} alternating rounds; "
             f"RTT n={rtt_n}, publish/consume n={stream_n}, 1 KiB)")
    print_table(title, ["workload", "raw", "sdk", "sdk/raw"], rows)
    print(f"duplicates delivered while draining (broker quirk): {results['consume_duplicates']}")
    write_results("pulsar", results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    asyncio.run(main(args.quick))
