"""``RequestResponse`` and ``Responder`` on the memory backend."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from trustgraph_pubsub import (
    ClosedError,
    PubSubTimeoutError,
    RequestResponse,
    Responder,
)
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub, MemoryProducer


@dataclass
class Req:
    n: int
    delay: float = 0.0
    parts: int = 0


@dataclass
class Resp:
    n: int
    part: int = 0
    end_of_stream: bool = False


def topics() -> tuple[str, str]:
    q = uuid.uuid4().hex[:10]
    return f"q1/tg/test/req{q}", f"q1/tg/test/resp{q}"


class RecordingBackend(MemoryBackend):
    """Records producer options, to check that request traffic is latency-bound,
    and the key of every send per topic (awaited or plain)."""

    def __init__(self, hub: MemoryHub) -> None:
        super().__init__(hub)
        self.producer_opts: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, list[str | None]] = {}

    async def create_producer(self, topic: str, schema: type[Any] | None, **opts: Any) -> MemoryProducer:
        self.producer_opts[topic] = opts
        producer = await super().create_producer(topic, schema, **opts)
        send, keys = producer.send, self.keys.setdefault(topic, [])

        async def recording(message: Any, properties: Any = None, *, key: str | None = None) -> None:
            keys.append(key)
            await send(message, properties, key=key)

        producer.send = recording  # type: ignore[method-assign]
        send_nowait = producer.send_nowait

        def recording_nowait(data: bytes, properties: Any, key: str | None) -> bool:
            sent = send_nowait(data, properties, key)
            if sent:
                keys.append(key)
            return sent

        producer.send_nowait = recording_nowait  # type: ignore[method-assign]
        return producer


@pytest.fixture
async def mb() -> AsyncIterator[RecordingBackend]:
    b = RecordingBackend(MemoryHub())
    yield b
    await b.close()


async def answer(req: Req, props: dict[str, str]) -> Resp:
    if req.delay:
        await asyncio.sleep(req.delay)
    return Resp(req.n * 10)


async def test_concurrent_requests_with_replies_out_of_order(mb: RecordingBackend) -> None:
    rq, rs = topics()
    order: list[int] = []

    async def handler(req: Req, props: dict[str, str]) -> Resp:
        await asyncio.sleep(req.delay)
        order.append(req.n)
        return Resp(req.n * 10)

    async with Responder(mb, rq, Req, rs, Resp, handler, subscription="svc", concurrency=50), \
            RequestResponse(mb, rq, Req, rs, Resp) as rr:
        rng = random.Random(7)
        reqs = [Req(n, delay=rng.uniform(0, 0.05)) for n in range(200)]
        replies = await asyncio.gather(*(rr.request(r, timeout=10) for r in reqs))
    assert replies == [Resp(n * 10) for n in range(200)]
    assert order != sorted(order)  # the replies really came back out of order
    assert mb.producer_opts[rq] == {"latency_bound": True}
    assert mb.producer_opts[rs] == {"latency_bound": True}


async def test_each_caller_gets_its_own_replies(mb: RecordingBackend) -> None:
    rq, rs = topics()
    async with Responder(mb, rq, Req, rs, Resp, answer, subscription="svc", concurrency=8), \
            RequestResponse(mb, rq, Req, rs, Resp) as a, \
            RequestResponse(mb, rq, Req, rs, Resp) as b:
        ra, rb = await asyncio.gather(
            asyncio.gather(*(a.request(Req(n)) for n in range(50))),
            asyncio.gather(*(b.request(Req(n + 1000)) for n in range(50))),
        )
        assert ra == [Resp(n * 10) for n in range(50)]
        assert rb == [Resp((n + 1000) * 10) for n in range(50)]
        assert a.subscription != b.subscription
        # each saw the other's 50 replies and dropped them
        for _ in range(100):
            if a._subscriber.dropped == b._subscriber.dropped == 50:
                break
            await asyncio.sleep(0.01)
        assert a._subscriber.dropped == b._subscriber.dropped == 50


async def test_timeout_raises_and_the_late_reply_is_dropped(mb: RecordingBackend) -> None:
    rq, rs = topics()
    async with Responder(mb, rq, Req, rs, Resp, answer, subscription="svc", concurrency=4), \
            RequestResponse(mb, rq, Req, rs, Resp) as rr:
        with pytest.raises(PubSubTimeoutError, match=f"no reply on {rs}.*within 0.05s"):
            await rr.request(Req(1, delay=0.2), timeout=0.05)
        for _ in range(500):  # the reply comes about 0.15 s later
            if rr._subscriber.dropped:
                break
            await asyncio.sleep(0.01)
        assert rr._subscriber.dropped == 1
        assert await rr.request(Req(2)) == Resp(20)


async def test_streams_end_on_the_final_flag(mb: RecordingBackend) -> None:
    rq, rs = topics()

    async def stream(req: Req, props: dict[str, str]) -> AsyncIterator[Resp]:
        for part in range(req.parts):
            await asyncio.sleep(0)
            yield Resp(req.n, part)

    raw = await mb.create_consumer(rs, "watch", Resp)
    async with Responder(mb, rq, Req, rs, Resp, stream, subscription="svc", concurrency=4), \
            RequestResponse(mb, rq, Req, rs, Resp) as rr:

        async def collect(n: int) -> list[Resp]:
            return [v async for v in rr.request_stream(Req(n, parts=5), timeout=5)]

        results = await asyncio.gather(*(collect(n) for n in range(10)))
    for n, got in enumerate(results):
        assert got == [Resp(n, p) for p in range(5)]
    finals: dict[str, list[str]] = {}
    for _ in range(50):
        m = await raw.receive(timeout=1)
        finals.setdefault(m.properties()["id"], []).append(m.properties()["final"])
    assert len(finals) == 10
    assert all(f == ["false"] * 4 + ["true"] for f in finals.values())


async def test_stream_ends_on_end_of_stream_or_a_custom_predicate(mb: RecordingBackend) -> None:
    rq, rs = topics()
    sent_after_end: list[int] = []

    async def handler(req: Req, props: dict[str, str]) -> AsyncIterator[Resp]:
        # end_of_stream on the third value; the Responder still sends the rest.
        for part in range(5):
            if part > 2:
                sent_after_end.append(part)
            yield Resp(req.n, part, end_of_stream=(part == 2))

    async with Responder(mb, rq, Req, rs, Resp, handler, subscription="svc"), \
            RequestResponse(mb, rq, Req, rs, Resp) as rr:
        got = [v.part async for v in rr.request_stream(Req(1))]
        assert got == [0, 1, 2]
        custom = [
            v.part
            async for v in rr.request_stream(
                Req(2), is_final=lambda v, p: v.part == 1
            )
        ]
        assert custom == [0, 1]
    # The callers stopped at their final value; the Responder still sent the rest.
    assert sent_after_end == [3, 4, 3, 4]


async def test_plain_replies_are_final(mb: RecordingBackend) -> None:
    rq, rs = topics()
    raw = await mb.create_consumer(rs, "watch", Resp)
    async with Responder(mb, rq, Req, rs, Resp, answer, subscription="svc"), \
            RequestResponse(mb, rq, Req, rs, Resp) as rr:
        assert [v async for v in rr.request_stream(Req(3))] == [Resp(30)]
        assert await rr.request(Req(4), properties={"user": "u1"}) == Resp(40)
    m = await raw.receive(timeout=1)
    assert m.properties()["final"] == "true"


async def test_a_stream_is_keyed_by_its_request_and_a_single_reply_is_not(
    mb: RecordingBackend,
) -> None:
    """A stream's replies share a key, so a partitioned topic keeps their order;
    a single reply has none to keep, and an unkeyed send is not hashed."""
    rq, rs = topics()

    async def handler(req: Req, props: dict[str, str]) -> Any:
        if not req.parts:
            return Resp(req.n)

        async def stream() -> AsyncIterator[Resp]:
            for part in range(req.parts):
                yield Resp(req.n, part)

        return stream()

    raw = await mb.create_consumer(rs, "watch", Resp)
    async with Responder(mb, rq, Req, rs, Resp, handler, subscription="svc"), \
            RequestResponse(mb, rq, Req, rs, Resp) as rr:
        assert await rr.request(Req(1)) == Resp(1)
        assert [v.part async for v in rr.request_stream(Req(2, parts=3))] == [0, 1, 2]
    ids = [(await raw.receive(timeout=1)).properties()["id"] for _ in range(4)]
    assert mb.keys[rs] == [None, ids[1], ids[1], ids[1]]
    assert ids[1] != ids[0]


async def test_handler_sees_request_properties(mb: RecordingBackend) -> None:
    rq, rs = topics()
    seen: list[dict[str, str]] = []

    def sync_handler(req: Req, props: dict[str, str]) -> Resp:
        seen.append(props)
        return Resp(req.n)

    async with Responder(mb, rq, Req, rs, Resp, sync_handler, subscription="svc"), \
            RequestResponse(mb, rq, Req, rs, Resp) as rr:
        assert await rr.request(Req(5), properties={"user": "u1"}) == Resp(5)
        assert await rr.request(Req(6)) == Resp(6)
    async with RequestResponse(mb, rq, Req, rs, Resp) as other:
        other_id = other._new_id()
    assert seen[0]["user"] == "u1"
    # ids are unique per request and per caller (a random prefix each)
    ids = {seen[0]["id"], seen[1]["id"], other_id}
    assert len(ids) == 3 and all(len(i) >= 17 for i in ids), ids


async def test_subscriptions_lifecycle(mb: RecordingBackend) -> None:
    rq, rs = topics()
    rr = RequestResponse(mb, rq, Req, rs, Resp)
    with pytest.raises(ClosedError, match="start"):
        await rr.request(Req(1))
    await rr.start()
    assert await mb.queue_exists(rs, rr.subscription)
    assert rr.subscription.startswith("rr-")
    await rr.stop()
    assert not await mb.queue_exists(rs, rr.subscription)
    with pytest.raises(ClosedError, match="stopped"):
        await rr.request(Req(1))
    named = RequestResponse(mb, rq, Req, rs, Resp, subscription="mine")
    await named.start()
    await named.stop()
    assert await mb.queue_exists(rs, "mine")
