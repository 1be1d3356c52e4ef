"""A stalled link: connections stay open and nothing gets through, the way a dead peer looks.

Clients reach the broker through ``TcpProxy``; ``blackhole()`` swallows every
byte both ways without closing anything.  Per backend, a resilient
``Consumer`` and ``Producer`` run through the proxy:

1. messages flow;
2. the link stalls for ``TG_STALL_SECONDS`` (12 here, 40 in ``make soak``)
   while the producer keeps sending;
3. the detection time is when the client, having given up on the silent
   connection, opens a new one (the proxy records it); it must come within
   the backend's keep-alive bound (MQTT ``--mqtt-keepalive`` and RabbitMQ
   ``--rabbitmq-heartbeat`` are set to 2 s);
4. the link comes back: every message whose ``send`` returned arrives, none
   is lost, duplicates are counted and printed.

Pulsar and Kafka are not here: their clients learn the broker's own address
from a lookup (Pulsar) or metadata (Kafka) and leave a bootstrap proxy behind.
The Kafka producer's stall path is covered in ``test_loss_paths.py`` with a
broker that advertises the proxy.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.brokers import Broker
from tests.brokers.proxy import TcpProxy
from trustgraph_pubsub import Consumer, Message, Producer, get_pubsub
from trustgraph_schema.topic import topic

STALL = float(os.environ.get("TG_STALL_SECONDS", "12"))
KEEPALIVE = 2


@dataclass
class Item:
    n: int


def through(broker: Broker, proxy: TcpProxy) -> dict[str, Any]:
    cfg = {"pubsub_backend": broker.name, **broker.backend_config()}
    if broker.name == "mqtt":
        cfg.update(mqtt_host="127.0.0.1", mqtt_port=proxy.port, mqtt_keepalive=KEEPALIVE,
                   mqtt_connect_timeout=3.0)
    else:
        cfg.update(rabbitmq_host="127.0.0.1", rabbitmq_port=proxy.port, rabbitmq_heartbeat=KEEPALIVE)
    return cfg


def upstream(broker: Broker) -> tuple[str, int]:
    cfg = broker.backend_config()
    key = "mqtt" if broker.name == "mqtt" else "rabbitmq"
    return str(cfg[f"{key}_host"]), int(cfg[f"{key}_port"])


@pytest.mark.parametrize("broker", ["mqtt", "rabbitmq"], indirect=True)
async def test_a_stalled_link_is_noticed_and_nothing_is_lost(broker: Broker) -> None:
    proxy = TcpProxy(*upstream(broker))
    await proxy.start()
    backend = get_pubsub(**through(broker, proxy))
    t = topic(f"stall-{os.urandom(4).hex()}", namespace="test")
    seen: dict[int, int] = {}

    async def handle(msg: Message) -> None:
        n = msg.value().n
        seen[n] = seen.get(n, 0) + 1

    await backend.create_queue(t, "s")
    consumer = Consumer(backend, t, "s", Item, handle, concurrency=4)
    producer = Producer(backend, t, Item, send_deadline=STALL + 60)
    await consumer.start()
    await producer.start()
    sent = 0
    loop = asyncio.get_running_loop()
    try:
        for _ in range(20):
            await producer.send(Item(sent))
            sent += 1
        await producer.flush()
        for _ in range(200):
            if len(seen) == sent:
                break
            await asyncio.sleep(0.05)
        assert len(seen) == sent, "messages did not flow before the stall"

        stalled_at = loop.time()
        proxy.blackhole()

        async def keep_sending() -> None:
            nonlocal sent
            while loop.time() - stalled_at < STALL + 30:
                await producer.send(Item(sent))  # returns only once accepted
                sent += 1
                await asyncio.sleep(0.1)

        sender = asyncio.create_task(keep_sending())
        await asyncio.sleep(STALL)
        reconnects = [a - stalled_at for a in proxy.accepted if a > stalled_at]
        proxy.resume()
        resumed_at = time.monotonic()
        await asyncio.sleep(3)
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender
        await asyncio.wait_for(producer.flush(), 60)
        for _ in range(1200):
            if all(i in seen for i in range(sent)):
                break
            await asyncio.sleep(0.05)
        recovered = time.monotonic() - resumed_at
    finally:
        await producer.stop()
        await consumer.stop()
        await backend.close()
        await proxy.close()

    lost = [i for i in range(sent) if i not in seen]
    dups = sum(c - 1 for c in seen.values())
    detected = reconnects[0] if reconnects else None
    print(f"\n{broker.name}: stall {STALL:g}s, keep-alive {KEEPALIVE}s: first reconnect "
          f"{'never' if detected is None else f'{detected:.1f}s'} after the stall began; "
          f"sent {sent}, lost {len(lost)}, duplicates {dups}, all arrived by {recovered:.1f}s after resume")
    assert detected is not None, "the client never noticed the stalled connection"
    assert detected <= 4 * KEEPALIVE + 2, f"noticed only after {detected:.1f}s"
    assert not lost, f"lost {len(lost)} of {sent}: {lost[:10]}"
