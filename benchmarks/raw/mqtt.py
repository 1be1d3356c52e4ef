"""paho-mqtt 2.x (MQTT 5), the fast way: its own network thread per client.

* produce: QoS 1 ``publish`` x N with 100 in flight (paho queues the rest),
  the clock stopping at the last PUBACK;
* consume: per consumer, a client that takes over one session of the
  subscription (``naming.mqtt_client_id``: the sessions the subscription's
  queue lives in), ``manual_ack`` and one ``ack`` per message after handling;
* rr: a responder client on ``$share/svc/<req>`` and a caller client on
  ``<resp>``, replies matched by an ``id`` user property;
* paced: a publishing client, a consuming client timing each message.

Every client sets TCP_NODELAY on its socket (paho does not; without it a
QoS 1 round trip waits out Nagle's algorithm, 40-90 ms).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks.workloads import Payload, Seen, pace, payload_bytes, payloads, run_pacer, warmup
from trustgraph_pubsub import naming
from trustgraph_schema import codec

WINDOW = 100
WAIT = 60.0


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Raw:
    name = "raw"

    def __init__(self, broker: str, config: dict[str, Any]) -> None:
        self.host = config.get("mqtt_host") or "127.0.0.1"
        self.port = int(config.get("mqtt_port") or 1883)
        self.expiry = int(config.get("mqtt_session_expiry") or 7 * 24 * 3600)
        self.clients: list[mqtt.Client] = []

    def client(self, client_id: str, *, on_message: Any = None, clean_start: bool = True,
               expiry: int = 0, manual_ack: bool = False) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=MQTTProtocolVersion.MQTTv5, manual_ack=manual_ack)
        c.max_inflight_messages_set(WINDOW)
        c.max_queued_messages_set(0)
        c.on_socket_open = _nodelay
        if on_message is not None:
            c.on_message = on_message
        connected = threading.Event()
        c.on_connect = lambda *a: connected.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        props.ReceiveMaximum = WINDOW
        c.connect(self.host, self.port, clean_start=clean_start, properties=props)
        c.loop_start()
        if not connected.wait(10):
            raise RuntimeError(f"paho client {client_id} did not connect")
        self.clients.append(c)
        return c

    @staticmethod
    def subscribe(c: mqtt.Client, topic_filter: str) -> None:
        done = threading.Event()
        c.on_subscribe = lambda *a: done.set()
        c.subscribe(topic_filter, 1)
        if not done.wait(10):
            raise RuntimeError(f"no SUBACK for {topic_filter}")

    async def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()
        self.clients.clear()

    def _publisher(self) -> tuple[mqtt.Client, threading.Event, list[int]]:
        acked = [0]
        target = [0]
        done = threading.Event()

        def on_publish(*a: Any) -> None:
            acked[0] += 1
            if acked[0] >= target[0]:
                done.set()

        c = self.client(f"raw-pub-{uuid.uuid4().hex[:8]}")
        c.on_publish = on_publish
        return c, done, target

    async def produce(self, topic: str, n: int) -> float:
        native = naming.mqtt_topic(topic)
        values = payloads(n)
        encode = codec.encode
        w = warmup(n)

        def run() -> float:
            c, done, target = self._publisher()
            target[0] = w
            for v in values[:w]:
                c.publish(native, encode(v), 1)
            if w and not done.wait(WAIT):
                raise RuntimeError("warm-up publishes were not acknowledged")
            done.clear()
            target[0] = n
            t0 = time.perf_counter()
            for v in values[w:]:
                c.publish(native, encode(v), 1)
            if not done.wait(300):
                raise RuntimeError("publishes were not acknowledged")
            return time.perf_counter() - t0

        return await asyncio.to_thread(run)

    def _session(self, loop: asyncio.AbstractEventLoop, topic: str, sub: str, slot: int,
                 seen: Seen, paced: bool) -> mqtt.Client:
        def on_message(c: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
            p = codec.decode(Payload, m.payload)
            c.ack(m.mid, m.qos)
            seen.add_threadsafe(loop, p.n, p.t if paced else 0.0)

        c = self.client(naming.mqtt_client_id(topic, sub, slot), on_message=on_message,
                        clean_start=False, expiry=self.expiry, manual_ack=True)
        self.subscribe(c, naming.mqtt_shared_filter(topic, sub))
        return c

    async def consume(self, topic: str, sub: str, n: int, consumers: int) -> tuple[float, int, int]:
        seen = Seen(n)
        loop = asyncio.get_running_loop()
        for slot in range(consumers):
            await asyncio.to_thread(self._session, loop, topic, sub, slot, seen, False)
        await seen.wait(300)
        await self.close()
        return seen.result()

    async def rr(self, req: str, resp: str, n: int, concurrency: int) -> list[float]:
        req_t, resp_t = naming.mqtt_topic(req), naming.mqtt_topic(resp)
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[bytes]] = {}

        def respond(c: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
            p = codec.decode(Payload, m.payload)
            c.publish(resp_t, codec.encode(p), 1, properties=m.properties)

        def reply(c: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
            rid = dict(getattr(m.properties, "UserProperty", [])).get("id", "")
            fut = waiting.pop(rid, None)
            if fut is not None:
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(m.payload))

        uid = uuid.uuid4().hex[:8]
        responder = await asyncio.to_thread(self.client, f"raw-svc-{uid}", on_message=respond)
        await asyncio.to_thread(self.subscribe, responder, f"$share/svc/{req_t}")
        caller = await asyncio.to_thread(self.client, f"raw-caller-{uid}", on_message=reply)
        await asyncio.to_thread(self.subscribe, caller, resp_t)
        out: list[float] = []

        async def one(i: int) -> None:
            rid = f"{uid}-{i}"
            fut = waiting[rid] = loop.create_future()
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("id", rid)
            t0 = time.perf_counter()
            caller.publish(req_t, payload_bytes(i), 1, properties=props)
            codec.decode(Payload, await asyncio.wait_for(fut, WAIT))
            out.append(time.perf_counter() - t0)

        try:
            await one(-1)
            out.clear()
            for start in range(0, n, concurrency):
                await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
        finally:
            await self.close()
        return out

    async def paced(self, topic: str, sub: str, rate: float, seconds: float) -> list[float]:
        seen = Seen(max(1, int(rate * seconds)))
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._session, loop, topic, sub, 0, seen, True)
        try:
            await run_pacer(self, topic, rate, seconds)
            await seen.wait(120)
        finally:
            await self.close()
        return seen.latencies

    async def send_paced(self, topic: str, rate: float, seconds: float) -> None:
        native = naming.mqtt_topic(topic)
        c, done, target = await asyncio.to_thread(self._publisher)
        target[0] = max(1, int(rate * seconds))

        async def send(i: int, scheduled: float) -> None:
            c.publish(native, payload_bytes(i, scheduled), 1)

        await pace(rate, seconds, send)
        await asyncio.to_thread(done.wait, WAIT)
        await self.close()
