"""MQTT: raw paho-mqtt against the SDK, on the same Mosquitto, in the same run.

Run ``python -m benchmarks.mqtt_bench`` (``--quick`` for a short run).  The
broker is the tests' fixture (``tests/brokers/mqtt.py``): a private
Mosquitto with ``set_tcp_nodelay true``, or the one ``MQTT_HOST``/``MQTT_PORT``
name.

Workloads, each raw and through the SDK:

* request/response round trip, one request at a time: raw, a paho requester
  and a paho responder (each with paho's own network thread, TCP_NODELAY set
  on both sockets, QoS 1, a correlation id as a user property) over two
  topics; SDK, ``RequestResponse`` + ``Responder``, and the backend's
  producer/consumer pair directly;
* publish: N QoS 1 messages of ``--size`` bytes, until the broker acked all;
* consume: N QoS 1 messages waiting in a durable subscription's session, read
  and acknowledged; raw, a paho client resuming the session (auto ack); SDK,
  a backend consumer's receive/ack loop and a ``Consumer`` with a handler.

Both sides get the same Receive Maximum (``--window``) and in-flight limit.
Ratios are SDK / raw: round trips want <= 1.15, rates >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks.common import median, percentile, print_table, write_results
from tests.brokers.mqtt import MQTTBroker
from trustgraph_pubsub import PubSubBackend
from trustgraph_pubsub.consumer import Consumer
from trustgraph_pubsub.request_response import RequestResponse, Responder
from trustgraph_schema import codec


@dataclass
class Item:
    n: int
    text: str = ""


# -- raw paho ----------------------------------------------------------------------------


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    import socket

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_client(
    broker: MQTTBroker,
    client_id: str,
    *,
    window: int,
    on_message: Any = None,
    clean_start: bool = True,
    expiry: int = 0,
) -> mqtt.Client:
    """A connected paho client running its network thread."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    c.max_inflight_messages_set(window)
    c.on_socket_open = _nodelay
    if on_message is not None:
        c.on_message = on_message
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    props.ReceiveMaximum = window
    c.connect(broker.host, broker.port, clean_start=clean_start, properties=props)
    c.loop_start()
    if not connected.wait(10):
        raise RuntimeError("raw paho client did not connect")
    return c


def raw_subscribe(c: mqtt.Client, topic_filter: str) -> None:
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topic_filter, 1)
    if not done.wait(10):
        raise RuntimeError("no SUBACK")


def raw_stop(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


def raw_rtt(broker: MQTTBroker, n: int, payload: bytes, window: int) -> list[float]:
    uid = uuid.uuid4().hex[:8]
    req_t, resp_t = f"bench/raw/req-{uid}", f"bench/raw/resp-{uid}"

    def respond(c: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        c.publish(resp_t, m.payload, 1, properties=m.properties)

    got = threading.Event()
    responder = raw_client(broker, f"raw-resp-{uid}", window=window, on_message=respond)
    raw_subscribe(responder, f"$share/svc/{req_t}")
    requester = raw_client(
        broker, f"raw-req-{uid}", window=window, on_message=lambda *a: got.set()
    )
    raw_subscribe(requester, resp_t)
    times = []
    try:
        for i in range(n):
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("id", uuid.uuid4().hex)
            got.clear()
            t0 = time.perf_counter()
            requester.publish(req_t, payload, 1, properties=props)
            if not got.wait(10):
                raise RuntimeError(f"raw request {i} got no reply")
            times.append(time.perf_counter() - t0)
    finally:
        raw_stop(requester)
        raw_stop(responder)
    return times


def raw_publish(broker: MQTTBroker, topic: str, n: int, payload: bytes, window: int) -> float:
    """msg/s for n QoS 1 publishes, until every PUBACK is in."""
    acked = 0
    done = threading.Event()

    def on_publish(*a: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    c = raw_client(broker, f"raw-pub-{uuid.uuid4().hex[:8]}", window=window)
    c.on_publish = on_publish
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            c.publish(topic, payload, 1)
        if not done.wait(120):
            raise RuntimeError(f"raw publish: {acked} of {n} acked")
        return n / (time.perf_counter() - t0)
    finally:
        raw_stop(c)


def raw_consume(broker: MQTTBroker, n: int, payload: bytes, window: int) -> tuple[float, float]:
    """(publish msg/s, consume msg/s): n messages wait in a session, then are drained."""
    uid = uuid.uuid4().hex[:8]
    topic, cid = f"bench/raw/stream-{uid}", f"raw-sub-{uid}"
    c = raw_client(broker, cid, window=window, clean_start=True, expiry=300)
    raw_subscribe(c, f"$share/s/{topic}")
    raw_stop(c)
    rate_pub = raw_publish(broker, topic, n, payload, window)
    count = 0
    done = threading.Event()

    def on_message(*a: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    t0 = time.perf_counter()
    c = raw_client(broker, cid, window=window, on_message=on_message, clean_start=False, expiry=0)
    try:
        if not done.wait(120):
            raise RuntimeError(f"raw consume: {count} of {n}")
        return rate_pub, n / (time.perf_counter() - t0)
    finally:
        raw_stop(c)


# -- the SDK --------------------------------------------------------------------------------


async def sdk_rtt(backend: PubSubBackend, n: int, text: str) -> list[float]:
    uid = uuid.uuid4().hex[:8]
    req_t, resp_t = f"q1/bench/sdk/req-{uid}", f"q1/bench/sdk/resp-{uid}"

    async def handle(req: Item, props: dict[str, str]) -> Item:
        return req

    responder = Responder(backend, req_t, Item, resp_t, Item, handle, subscription="svc")
    await responder.start()
    rr = RequestResponse(backend, req_t, Item, resp_t, Item)
    await rr.start()
    times = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            await rr.request(Item(i, text), timeout=10)
            times.append(time.perf_counter() - t0)
    finally:
        await rr.stop()
        await responder.stop()
    return times


async def backend_rtt(backend: PubSubBackend, n: int, text: str) -> list[float]:
    """Round trip through the backend's producers and consumers alone."""
    uid = uuid.uuid4().hex[:8]
    req_t, resp_t = f"q1/bench/be/req-{uid}", f"q1/bench/be/resp-{uid}"
    req_c = await backend.create_consumer(req_t, "svc", Item)
    resp_c = await backend.create_consumer(resp_t, "caller", Item)
    req_p = await backend.create_producer(req_t, Item, latency_bound=True)
    resp_p = await backend.create_producer(resp_t, Item, latency_bound=True)

    async def serve() -> None:
        while True:
            m = await req_c.receive()
            await resp_p.send(m.value(), m.properties())
            await req_c.acknowledge(m)

    server = asyncio.create_task(serve())
    times = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            await req_p.send(Item(i, text), {"id": uuid.uuid4().hex})
            m = await resp_c.receive(timeout=10)
            await resp_c.acknowledge(m)
            times.append(time.perf_counter() - t0)
    finally:
        server.cancel()
        for c in (req_c, resp_c):
            await c.unsubscribe()
    return times


async def sdk_publish(backend: PubSubBackend, topic: str, n: int, text: str) -> float:
    p = await backend.create_producer(topic, Item)
    items = [Item(i, text) for i in range(n)]
    t0 = time.perf_counter()
    for item in items:
        await p.send(item)
    await p.flush()
    rate = n / (time.perf_counter() - t0)
    await p.close()
    return rate


async def sdk_consume(backend: PubSubBackend, n: int, text: str, window: int) -> tuple[float, float, float]:
    """(publish, backend consumer, Consumer) msg/s over n messages waiting in the session."""
    uid = uuid.uuid4().hex[:8]
    topic = f"q1/bench/sdk/stream-{uid}"
    c = await backend.create_consumer(topic, "s", Item, prefetch=window)
    await c.close()
    rate_pub = await sdk_publish(backend, topic, n, text)
    t0 = time.perf_counter()
    c = await backend.create_consumer(topic, "s", Item, prefetch=window)
    for _ in range(n):
        m = await c.receive(timeout=30)
        m.value()
        await c.acknowledge(m)
    rate_backend = n / (time.perf_counter() - t0)
    await c.close()

    # The resilient Consumer, on a second subscription's backlog.
    c = await backend.create_consumer(topic, "h", Item, prefetch=window)
    await c.close()
    await sdk_publish(backend, topic, n, text)
    handled = 0
    done = asyncio.Event()

    async def handler(msg: Any) -> None:
        nonlocal handled
        msg.value()
        handled += 1
        if handled == n:
            done.set()

    t0 = time.perf_counter()
    consumer = Consumer(backend, topic, "h", Item, handler, concurrency=window)
    await consumer.start()
    await asyncio.wait_for(done.wait(), 120)
    rate_consumer = n / (time.perf_counter() - t0)
    await consumer.stop(unsubscribe=True)
    c = await backend.create_consumer(topic, "s", Item)
    await c.unsubscribe()
    return rate_pub, rate_backend, rate_consumer


# -- the run ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    broker = MQTTBroker()
    broker.start()
    text = "x" * max(0, args.size - len(codec.encode(Item(0, ""))))
    payload = codec.encode(Item(0, text))
    try:
        backend = broker.make_backend(mqtt_max_inflight=args.window)
        try:
            rounds: dict[str, list[float]] = {}
            rtts: dict[str, list[float]] = {"raw": [], "sdk": [], "backend": []}
            for _ in range(args.rounds):
                rtts["raw"] += await asyncio.to_thread(raw_rtt, broker, args.requests, payload, args.window)
                rtts["sdk"] += await sdk_rtt(backend, args.requests, text)
                rtts["backend"] += await backend_rtt(backend, args.requests, text)
                raw_pub, raw_con = await asyncio.to_thread(raw_consume, broker, args.messages, payload, args.window)
                sdk_pub, sdk_con, sdk_cons = await sdk_consume(backend, args.messages, text, args.window)
                for k, v in {"raw publish": raw_pub, "raw consume": raw_con, "sdk publish": sdk_pub,
                             "sdk consume": sdk_con, "sdk Consumer": sdk_cons}.items():
                    rounds.setdefault(k, []).append(v)
        finally:
            await backend.close()
    finally:
        broker.stop()

    ms = {k: (percentile(v, 50) * 1000, percentile(v, 99) * 1000) for k, v in rtts.items()}
    rates = {k: median(v) for k, v in rounds.items()}
    rows = [
        ["rtt p50 ms", ms["raw"][0], ms["sdk"][0], ms["sdk"][0] / ms["raw"][0],
         ms["backend"][0], ms["backend"][0] / ms["raw"][0]],
        ["rtt p99 ms", ms["raw"][1], ms["sdk"][1], ms["sdk"][1] / ms["raw"][1],
         ms["backend"][1], ms["backend"][1] / ms["raw"][1]],
        ["publish msg/s", rates["raw publish"], rates["sdk publish"],
         rates["sdk publish"] / rates["raw publish"], rates["sdk publish"],
         rates["sdk publish"] / rates["raw publish"]],
        ["consume msg/s", rates["raw consume"], rates["sdk Consumer"],
         rates["sdk Consumer"] / rates["raw consume"], rates["sdk consume"],
         rates["sdk consume"] / rates["raw consume"]],
    ]
    print_table(
        f"MQTT (Mosquitto, paho {paho.mqtt.__version__}): "
        f"{args.size} B, window {args.window}, {args.requests} requests x {args.rounds}, "
        f"{args.messages} messages x {args.rounds} (medians)",
        ["workload", "raw paho", "SDK", "SDK/raw", "backend", "backend/raw"],
        rows,
    )
    print("SDK = RequestResponse+Responder (rtt), Consumer (consume); backend = producer/consumer direct")
    return {
        "config": vars(args),
        "rtt_ms": {k: {"p50": v[0], "p99": v[1], "mean": statistics.fmean(rtts[k]) * 1000}
                   for k, v in ms.items()},
        "rates_msg_per_s": rates,
        "rates_all_rounds": rounds,
        "ratios": {row[0]: {"sdk": row[3], "backend": row[5]} for row in rows},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: fewer messages, one round")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    parser.add_argument("--window", type=int, default=100,
                        help="Receive Maximum and publishes in flight, raw and SDK alike")
    args = parser.parse_args()
    args.messages = args.messages or (3000 if args.quick else 10000)
    args.requests = args.requests or (300 if args.quick else 1000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    results = asyncio.run(run(args))
    write_results("mqtt", results)


if __name__ == "__main__":
    main()
