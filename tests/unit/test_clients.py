"""``Producer``, ``Publisher`` and ``Subscriber`` on the memory backend."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from trustgraph_pubsub import (
    BrokerConnectionError,
    ClosedError,
    ConfigurationError,
    MessageTooLargeError,
    Producer,
    Publisher,
    PubSubTimeoutError,
    Subscriber,
)
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub, MemoryProducer
from trustgraph_pubsub.metrics import Metrics
from trustgraph_pubsub.retry import Backoff


@dataclass
class Item:
    n: int


def fresh() -> str:
    return f"q1/tg/test/p{uuid.uuid4().hex[:12]}"


class OutageBackend(MemoryBackend):
    """The memory broker with an outage switch: while ``down``, connecting fails.

    ``MemoryHub.restart()`` drops the open producers; with ``down`` set the
    resilient clients then cannot reconnect until it is cleared.
    """

    down = False

    async def create_producer(self, topic: str, schema: type[Any] | None, **opts: Any) -> MemoryProducer:
        if self.down:
            raise BrokerConnectionError("memory broker is down (test outage)")
        return await super().create_producer(topic, schema, **opts)


@pytest.fixture
def hub() -> MemoryHub:
    return MemoryHub()


@pytest.fixture
async def mb(hub: MemoryHub) -> AsyncIterator[OutageBackend]:
    b = OutageBackend(hub)
    yield b
    await b.close()


async def received(b: MemoryBackend, consumer: Any, wait: float = 0.1) -> list[Any]:
    out: list[Any] = []
    while True:
        try:
            m = await consumer.receive(timeout=wait)
        except PubSubTimeoutError:
            return out
        out.append(m)
        await consumer.acknowledge(m)


# -- Producer ----------------------------------------------------------------


async def test_producer_sends_and_starts_lazily(mb: OutageBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    metrics = Metrics(CollectorRegistry())
    p = Producer(mb, t, Item, metrics=metrics)
    await p.send(Item(1), {"a": "b"}, key="k")
    await p.flush()
    await p.close()
    await p.close()
    got = await received(mb, c)
    assert [(m.value(), m.properties()) for m in got] == [(Item(1), {"a": "b"})]
    assert metrics.value("sent_total", topic=t, backend="memory") == 1
    with pytest.raises(ClosedError, match="closed"):
        await p.send(Item(2))


async def test_producer_raises_bad_input_at_once(mb: OutageBackend) -> None:
    async with Producer(mb, fresh(), Item) as p:
        with pytest.raises(TypeError, match="sends Item"):
            await p.send("not an item")


async def test_producer_recreates_after_a_restart(hub: MemoryHub, mb: OutageBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    async with Producer(mb, t, Item) as p:
        await p.send(Item(1))
        await hub.restart()
        await p.send(Item(2))  # the old backend producer is gone: recreated
    c = await mb.create_consumer(t, "s", Item)
    assert [m.value().n for m in await received(mb, c)] == [1, 2]


async def test_producer_waits_out_an_outage(hub: MemoryHub, mb: OutageBackend) -> None:
    t = fresh()
    await mb.create_queue(t, "s")
    async with Producer(mb, t, Item, backoff=Backoff(base=0.01, cap=0.05)) as p:
        mb.down = True
        await hub.restart()
        sending = asyncio.create_task(p.send(Item(1)))
        await asyncio.sleep(0.2)
        assert not sending.done()
        mb.down = False
        await asyncio.wait_for(sending, 2)
    c = await mb.create_consumer(t, "s", Item)
    assert [m.value().n for m in await received(mb, c)] == [1]


async def test_producer_gives_up_after_send_deadline(hub: MemoryHub, mb: OutageBackend) -> None:
    p = Producer(mb, fresh(), Item, send_deadline=0.3, backoff=Backoff(base=0.01, cap=0.05))
    await p.start()
    mb.down = True
    await hub.restart()
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(BrokerConnectionError, match="down"):
        await p.send(Item(1))
    assert 0.2 < loop.time() - began < 3.0


# -- Publisher ---------------------------------------------------------------


async def test_publisher_close_loses_nothing(mb: OutageBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    got: list[int] = []

    async def collect() -> None:
        while len(got) < 2000:
            m = await c.receive(timeout=5)
            got.append(m.value().n)
            await c.acknowledge(m)

    collector = asyncio.create_task(collect())

    async def one(i: int) -> None:
        pub = Publisher(mb, t, Item, max_pending=10)
        await pub.start()
        for n in range(100):
            await pub.publish(Item(i * 100 + n))
        await pub.close()

    await asyncio.gather(*(one(i) for i in range(20)))
    await asyncio.wait_for(collector, 5)
    assert sorted(got) == list(range(2000))
    # each publisher keeps its own order
    for i in range(20):
        mine = [n for n in got if n // 100 == i]
        assert mine == sorted(mine)


async def test_publisher_applies_back_pressure_and_never_drops(
    hub: MemoryHub, mb: OutageBackend
) -> None:
    t = fresh()
    await mb.create_queue(t, "s")
    pub = Publisher(mb, t, Item, max_pending=3)
    pub._producer._backoff = Backoff(base=0.01, cap=0.05)
    await pub.start()
    await pub.publish(Item(0))
    await asyncio.sleep(0.01)
    mb.down = True
    await hub.restart()
    await pub.publish(Item(1))  # the sender takes it and stalls on the outage
    await asyncio.sleep(0.05)
    for n in range(2, 5):
        await pub.publish(Item(n))  # fills the buffer
    assert pub.pending == 3
    blocked = asyncio.create_task(pub.publish(Item(5)))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    mb.down = False
    await asyncio.wait_for(blocked, 3)
    await asyncio.wait_for(pub.close(), 3)
    c = await mb.create_consumer(t, "s", Item)
    assert [m.value().n for m in await received(mb, c)] == list(range(6))


async def test_publisher_refuses_bad_input_in_the_caller(mb: OutageBackend) -> None:
    small = MemoryBackend(MemoryHub(max_message_size=10))
    with pytest.raises(ConfigurationError, match="max_pending"):
        Publisher(mb, fresh(), Item, max_pending=0)
    async with Publisher(small, fresh(), None) as pub:
        with pytest.raises(TypeError, match="bytes"):
            await pub.publish(Item(1))
        with pytest.raises(MessageTooLargeError, match="limit of 10"):
            await pub.publish(b"x" * 11)
        with pytest.raises(TypeError, match="str -> str"):
            await pub.publish(b"x", {"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ClosedError):
        await pub.publish(b"x")


# -- Subscriber --------------------------------------------------------------


async def test_subscriber_routes_by_key_and_drops_the_rest(mb: OutageBackend) -> None:
    t = fresh()
    metrics = Metrics(CollectorRegistry())
    async with Subscriber(mb, t, "sub", Item, metrics=metrics) as sub:
        qa = sub.subscribe("a")
        qb = sub.subscribe("b")
        p = await mb.create_producer(t, Item)
        for n in range(50):
            await p.send(Item(n), {"id": "ab"[n % 2]})
        await p.send(Item(99), {"id": "nobody"})
        await p.send(Item(98))
        a = [(await asyncio.wait_for(qa.get(), 2)).value().n for _ in range(25)]
        b = [(await asyncio.wait_for(qb.get(), 2)).value().n for _ in range(25)]
        assert a == list(range(0, 50, 2))
        assert b == list(range(1, 50, 2))
        sub.unsubscribe("a")
        sub.unsubscribe("a")
        await p.send(Item(100), {"id": "a"})
        for _ in range(100):
            if sub.dropped == 3:
                break
            await asyncio.sleep(0.01)
        assert sub.dropped == 3
        assert qa.empty()
    assert metrics.value("dropped_total", topic=t, subscription="sub", backend="memory") == 3
    c = await mb.create_consumer(t, "sub", Item)
    assert await received(mb, c) == []  # everything was acknowledged


async def test_subscriber_custom_correlation_property(mb: OutageBackend) -> None:
    t = fresh()
    async with Subscriber(mb, t, "sub", Item, correlation_property="corr") as sub:
        q = sub.subscribe("x")
        p = await mb.create_producer(t, Item)
        await p.send(Item(1), {"id": "x"})
        await p.send(Item(2), {"corr": "x"})
        assert (await asyncio.wait_for(q.get(), 2)).value() == Item(2)


# -- metrics -----------------------------------------------------------------


def test_metrics_share_collectors_per_registry_and_can_be_off() -> None:
    reg = CollectorRegistry()
    a, b = Metrics(reg), Metrics(reg)  # a second instance must not re-register
    a.bind("q1/tg/x/y", "s", "memory").received()
    b.bind("q1/tg/x/y", "s", "memory").received()
    assert a.value("messages_total", topic="q1/tg/x/y", subscription="s", backend="memory") == 2
    b.bind("q1/tg/x/y", "s", "memory").latency(0.003)
    assert a.value("handler_seconds_count", topic="q1/tg/x/y", subscription="s", backend="memory") == 1
    off = Metrics(reg, enabled=False)
    bound = off.bind("q1/tg/x/y", "s", "memory")
    bound.received()
    bound.latency(1.0)
    off.bind_producer("q1/tg/x/y", "memory").sent()
    assert off.value("messages_total", topic="q1/tg/x/y", subscription="s", backend="memory") == 0
    assert a.value("messages_total", topic="q1/tg/x/y", subscription="s", backend="memory") == 2
    names = {s.name for m in reg.collect() for s in m.samples}
    labels = {k for m in reg.collect() for s in m.samples for k in s.labels}
    assert labels <= {"topic", "subscription", "backend", "le"}
    assert all(n.startswith("trustgraph_pubsub_") for n in names)
