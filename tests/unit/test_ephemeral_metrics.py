"""Ephemeral subscriptions on the memory backend, and releasing their metrics."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from trustgraph_pubsub import Consumer, PubSubError, RequestResponse, Responder
from trustgraph_pubsub.backend import Message
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub
from trustgraph_pubsub.metrics import Metrics


@dataclass
class Req:
    n: int


@dataclass
class Resp:
    n: int


def topics() -> tuple[str, str]:
    q = uuid.uuid4().hex[:10]
    return f"q1/tg/test/req{q}", f"q1/tg/test/resp{q}"


def samples(reg: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [
        dict(s.labels)
        for fam in reg.collect()
        for s in fam.samples
        if s.name == f"trustgraph_pubsub_{name}"
    ]


def test_release_drops_a_label_set() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    a = m.bind("q1/t/n/x", "sub-a", "memory")
    b = m.bind("q1/t/n/x", "sub-b", "memory")
    a.received()
    b.received()
    b.received()
    assert m.value("messages_total", topic="q1/t/n/x", subscription="sub-a", backend="memory") == 1
    assert m.release("q1/t/n/x", "sub-a", "memory") is True
    assert m.release("q1/t/n/x", "sub-a", "memory") is False  # idempotent
    subs = {s["subscription"] for s in samples(reg, "messages_total")}
    assert subs == {"sub-b"}
    assert not any(s.get("subscription") == "sub-a" for s in samples(reg, "handler_seconds_count"))
    # the old handle still works, into a cell nobody reads
    a.received()
    assert m.value("messages_total", topic="q1/t/n/x", subscription="sub-a", backend="memory") == 0
    assert m.value("messages_total", topic="q1/t/n/x", subscription="sub-b", backend="memory") == 2
    # binding again starts from zero
    m.bind("q1/t/n/x", "sub-a", "memory").received()
    assert m.value("messages_total", topic="q1/t/n/x", subscription="sub-a", backend="memory") == 1


def test_release_disabled_is_a_no_op() -> None:
    m = Metrics(enabled=False)
    m.bind("q1/t/n/x", "s", "memory").received()
    assert m.release("q1/t/n/x", "s", "memory") is False


async def test_memory_ephemeral_subscription_goes_with_its_consumer() -> None:
    backend = MemoryBackend(MemoryHub())
    topic = f"q1/tg/test/eph{uuid.uuid4().hex[:8]}"
    c = await backend.create_consumer(topic, "eph", None, ephemeral=True)
    assert await backend.queue_exists(topic, "eph")
    p = await backend.create_producer(topic, None)
    await p.send(b"held")
    await c.close()
    assert not await backend.queue_exists(topic, "eph")
    # a new consumer of that name gets a new, empty subscription
    c2 = await backend.create_consumer(topic, "eph", None, ephemeral=True)
    await p.send(b"fresh")
    msg = await c2.receive(timeout=1)
    assert msg.data() == b"fresh"
    # an ephemeral consumer cannot take over a durable subscription
    await backend.create_queue(topic, "durable")
    with pytest.raises(PubSubError):
        await backend.create_consumer(topic, "durable", None, ephemeral=True)
    # a lost connection (simulated restart) removes it too
    await backend.hub.restart()
    assert not await backend.queue_exists(topic, "eph")
    assert await backend.queue_exists(topic, "durable")
    await backend.close()


async def test_durable_subscription_survives_close() -> None:
    backend = MemoryBackend(MemoryHub())
    topic = f"q1/tg/test/dur{uuid.uuid4().hex[:8]}"
    c = await backend.create_consumer(topic, "dur", None)
    await c.close()
    assert await backend.queue_exists(topic, "dur")
    await backend.close()


async def test_ephemeral_consumer_releases_its_metrics() -> None:
    reg = CollectorRegistry()
    metrics = Metrics(reg)
    backend = MemoryBackend(MemoryHub())
    topic = f"q1/tg/test/m{uuid.uuid4().hex[:8]}"

    async def handler(_msg: Message) -> None:
        return None

    eph = Consumer(backend, topic, "eph", None, handler, ephemeral=True, metrics=metrics)
    dur = Consumer(backend, topic, "dur", None, handler, metrics=metrics)
    await eph.start()
    await dur.start()
    p = await backend.create_producer(topic, None)
    await p.send(b"x")
    for _ in range(100):
        if metrics.value("messages_total", topic=topic, subscription="eph", backend="memory"):
            break
        await asyncio.sleep(0.01)
    assert {s["subscription"] for s in samples(reg, "messages_total")} == {"eph", "dur"}
    await eph.stop()
    await dur.stop()
    assert {s["subscription"] for s in samples(reg, "messages_total")} == {"dur"}
    assert not await backend.queue_exists(topic, "eph")
    assert await backend.queue_exists(topic, "dur")
    await backend.close()


async def test_many_request_response_callers_leave_nothing() -> None:
    reg = CollectorRegistry()
    metrics = Metrics(reg)
    backend = MemoryBackend(MemoryHub())
    req_t, resp_t = topics()
    responder = Responder(
        backend, req_t, Req, resp_t, Resp, lambda r, _p: Resp(r.n), subscription="svc",
        metrics=metrics,
    )
    await responder.start()
    subs = []
    for i in range(50):
        async with RequestResponse(backend, req_t, Req, resp_t, Resp, metrics=metrics) as rr:
            assert (await rr.request(Req(i), timeout=5)).n == i
            subs.append(rr.subscription)
    named = RequestResponse(backend, req_t, Req, resp_t, Resp, subscription="named", metrics=metrics)
    await named.start()
    assert not named._subscriber._consumer.ephemeral
    await named.stop()
    await responder.stop()
    for sub in subs:
        assert not await backend.queue_exists(resp_t, sub)
    left = {s["subscription"] for s in samples(reg, "messages_total")}
    assert not left & set(subs), "ephemeral callers left label sets behind"
    assert "svc" in left
    await backend.close()
