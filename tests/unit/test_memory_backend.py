"""The in-process backend keeps the same semantics as the broker backends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.turns import LoopTurns
from trustgraph_pubsub import (
    BadTopicError,
    ClosedError,
    ConfigurationError,
    ConnectionLostError,
    MessageDecodeError,
    MessageTooLargeError,
    PubSubError,
    PubSubTimeoutError,
    get_pubsub,
)
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub, default_hub


@dataclass
class Item:
    n: int
    text: str = ""
    note: str | None = None


@dataclass
class Other:
    name: str


def fresh(qos: str = "q1") -> str:
    return f"{qos}/tg/test/t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hub() -> MemoryHub:
    return MemoryHub()


@pytest.fixture
async def mb(hub: MemoryHub) -> AsyncIterator[MemoryBackend]:
    b = MemoryBackend(hub)
    yield b
    await b.close()


async def drain(consumer: Any, ack: bool = True, wait: float = 0.05) -> list[Any]:
    """Everything the consumer gets until ``wait`` seconds pass with nothing."""
    out: list[Any] = []
    while True:
        try:
            m = await consumer.receive(timeout=wait)
        except PubSubTimeoutError:
            return out
        out.append(m)
        if ack:
            await consumer.acknowledge(m)


async def test_round_trip_value_properties_and_topic(mb: MemoryBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    await p.send(Item(1, "héllo"), {"a": "b"}, key="k")
    m = await c.receive(timeout=1)
    assert m.value() == Item(1, "héllo")
    assert m.properties() == {"a": "b"}
    assert m.topic == t
    assert m.redelivery_count == 0
    assert m.data() == b'{"n":1,"text":"h\xc3\xa9llo"}'
    await c.acknowledge(m)


async def test_two_default_backends_share_the_process_hub() -> None:
    a, b = get_pubsub(pubsub_backend="memory"), get_pubsub(pubsub_backend="memory")
    assert isinstance(a, MemoryBackend) and isinstance(b, MemoryBackend)
    assert a.hub is b.hub is default_hub()
    t = fresh()
    c = await a.create_consumer(t, "s", Item)
    p = await b.create_producer(t, Item)
    await p.send(Item(7))
    assert (await c.receive(timeout=1)).value() == Item(7)
    await a.close()
    await b.close()


async def test_shared_subscription_splits_without_loss_or_duplicates(mb: MemoryBackend) -> None:
    t = fresh()
    consumers = [await mb.create_consumer(t, "s", Item) for _ in range(3)]
    got: list[list[int]] = [[] for _ in consumers]

    async def run(i: int) -> None:
        while True:
            try:
                m = await consumers[i].receive(timeout=0.2)
            except PubSubTimeoutError:
                return
            got[i].append(m.value().n)
            await consumers[i].acknowledge(m)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(run(i)) for i in range(3)]
    p = await mb.create_producer(t, Item)
    for n in range(300):
        await p.send(Item(n))
    await asyncio.gather(*tasks)
    everything = sorted(n for g in got for n in g)
    assert everything == list(range(300))
    assert all(len(g) > 0 for g in got), [len(g) for g in got]


async def test_distinct_subscriptions_fan_out(mb: MemoryBackend) -> None:
    t = fresh()
    c1 = await mb.create_consumer(t, "one", Item)
    c2 = await mb.create_consumer(t, "two", Item)
    p = await mb.create_producer(t, Item)
    for n in range(20):
        await p.send(Item(n))
    assert [m.value().n for m in await drain(c1)] == list(range(20))
    assert [m.value().n for m in await drain(c2)] == list(range(20))


async def test_topics_are_isolated(mb: MemoryBackend) -> None:
    t1, t2 = fresh(), fresh()
    c1 = await mb.create_consumer(t1, "s", Item)
    c2 = await mb.create_consumer(t2, "s", Item)
    await (await mb.create_producer(t1, Item)).send(Item(1))
    await (await mb.create_producer(t2, Item)).send(Item(2))
    assert [m.value().n for m in await drain(c1)] == [1]
    assert [m.value().n for m in await drain(c2)] == [2]


async def test_qos_is_not_part_of_identity(mb: MemoryBackend) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    c = await mb.create_consumer(f"q1/tg/test/{name}", "s", Item)
    await (await mb.create_producer(f"q2/tg/test/{name}", Item)).send(Item(3))
    assert [m.value().n for m in await drain(c)] == [3]


async def test_exclusive_refuses_a_second_consumer(mb: MemoryBackend) -> None:
    t = fresh()
    first = await mb.create_consumer(t, "s", Item, consumer_type="exclusive")
    with pytest.raises(PubSubError, match="exclusive"):
        await mb.create_consumer(t, "s", Item, consumer_type="exclusive")
    with pytest.raises(PubSubError, match="exclusive"):
        await mb.create_consumer(t, "s", Item, consumer_type="shared")
    await first.close()
    again = await mb.create_consumer(t, "s", Item, consumer_type="exclusive")
    await again.close()


async def test_failover_delivers_to_the_first_until_it_closes(mb: MemoryBackend) -> None:
    t = fresh()
    active = await mb.create_consumer(t, "s", Item, consumer_type="failover")
    standby = await mb.create_consumer(t, "s", Item, consumer_type="failover")
    p = await mb.create_producer(t, Item)
    for n in range(4):
        await p.send(Item(n))
    with pytest.raises(PubSubTimeoutError):
        await standby.receive(timeout=0.05)
    m0 = await active.receive(timeout=1)
    await active.acknowledge(m0)
    await active.receive(timeout=1)  # left unacked
    await active.close()
    rest = await drain(standby)
    assert [(m.value().n, m.redelivery_count) for m in rest] == [(1, 1), (2, 0), (3, 0)]


async def test_mixing_consumer_types_is_refused(mb: MemoryBackend) -> None:
    t = fresh()
    await mb.create_consumer(t, "s", Item, consumer_type="shared")
    with pytest.raises(PubSubError, match="shared consumers"):
        await mb.create_consumer(t, "s", Item, consumer_type="failover")


async def test_earliest_replays_and_latest_starts_after(mb: MemoryBackend) -> None:
    t = fresh()
    p = await mb.create_producer(t, Item)
    for n in range(5):
        await p.send(Item(n), {"i": str(n)})
    early = await mb.create_consumer(t, "early", Item, initial_position="earliest")
    late = await mb.create_consumer(t, "late", Item, initial_position="latest")
    await p.send(Item(5))
    got = await drain(early)
    assert [m.value().n for m in got] == list(range(6))
    assert got[2].properties() == {"i": "2"}
    assert [m.value().n for m in await drain(late)] == [5]


async def test_existing_subscription_keeps_its_position(mb: MemoryBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item, initial_position="latest")
    p = await mb.create_producer(t, Item)
    await p.send(Item(1))
    await c.close()
    await p.send(Item(2))
    again = await mb.create_consumer(t, "s", Item, initial_position="earliest")
    assert [m.value().n for m in await drain(again)] == [1, 2]


async def test_q0_topics_keep_no_log() -> None:
    b = MemoryBackend(MemoryHub())
    t = fresh("q0")
    await (await b.create_producer(t, Item)).send(Item(1))
    c = await b.create_consumer(t, "s", Item, initial_position="earliest")
    assert await drain(c) == []


async def test_retention_is_bounded() -> None:
    b = MemoryBackend(MemoryHub(retain=3))
    t = fresh()
    p = await b.create_producer(t, Item)
    for n in range(10):
        await p.send(Item(n))
    c = await b.create_consumer(t, "s", Item, initial_position="earliest")
    assert [m.value().n for m in await drain(c)] == [7, 8, 9]


async def test_nack_redelivers_with_a_higher_count(mb: MemoryBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    await p.send(Item(1))
    await p.send(Item(2))
    m = await c.receive(timeout=1)
    assert (m.value().n, m.redelivery_count) == (1, 0)
    await c.negative_acknowledge(m)
    got = [(x.value().n, x.redelivery_count) for x in await drain(c)]
    assert got == [(2, 0), (1, 1)]


async def test_ack_of_one_never_acks_another(mb: MemoryBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    for n in range(3):
        await p.send(Item(n))
    a, b, d = [await c.receive(timeout=1) for _ in range(3)]
    await c.acknowledge(b)
    await c.acknowledge(b)  # twice is harmless
    await c.close()
    c2 = await mb.create_consumer(t, "s", Item)
    assert [(m.value().n, m.redelivery_count) for m in await drain(c2)] == [(0, 1), (2, 1)]


async def test_close_keeps_the_subscription_and_unsubscribe_deletes_it(mb: MemoryBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    await p.send(Item(1))
    await c.close()
    await c.close()  # idempotent
    assert await mb.queue_exists(t, "s")
    await p.send(Item(2))
    c2 = await mb.create_consumer(t, "s", Item)
    assert [m.value().n for m in await drain(c2, ack=False)] == [1, 2]
    await c2.unsubscribe()
    assert not await mb.queue_exists(t, "s")
    c3 = await mb.create_consumer(t, "s", Item, initial_position="latest")
    assert await drain(c3) == []


async def test_queue_lifecycle(mb: MemoryBackend) -> None:
    t = fresh()
    assert not await mb.queue_exists(t, "s")
    await mb.create_queue(t, "s")
    assert await mb.queue_exists(t, "s")
    await mb.ensure_queue(t, "s")
    await mb.ensure_queue(t, "s")
    # A queue created before any consumer holds what is published to it.
    await (await mb.create_producer(t, Item)).send(Item(1))
    c = await mb.create_consumer(t, "s", Item)
    assert [m.value().n for m in await drain(c, ack=False)] == [1]
    await mb.delete_queue(t, "s")
    assert not await mb.queue_exists(t, "s")
    with pytest.raises(ClosedError, match="deleted"):
        await c.receive(timeout=0.1)
    await mb.delete_queue(t, "s")  # missing: no error


async def test_delete_topic_removes_every_subscription(mb: MemoryBackend) -> None:
    t = fresh()
    await mb.create_queue(t, "a")
    waiting = await mb.create_consumer(t, "b", Item)
    pending = asyncio.create_task(waiting.receive())
    await asyncio.sleep(0)
    await (await mb.create_producer(t, Item)).send(Item(1))
    await mb.delete_queue(t, None)
    assert not await mb.queue_exists(t, "a")
    assert not await mb.queue_exists(t, "b")
    # The message was handed over, but the consumer is gone before it ran.
    with pytest.raises(ClosedError, match="deleted"):
        await pending
    with pytest.raises(ClosedError):
        await waiting.receive(timeout=0.1)
    c = await mb.create_consumer(t, "a", Item, initial_position="earliest")
    assert await drain(c) == []


async def test_receive_timeout(mb: MemoryBackend) -> None:
    c = await mb.create_consumer(fresh(), "s", Item)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(PubSubTimeoutError, match="within 0.05s"):
        await c.receive(timeout=0.05)
    assert loop.time() - start < 2.0


async def test_cancelled_receive_loses_nothing(mb: MemoryBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    task = asyncio.create_task(c.receive())
    await asyncio.sleep(0)
    await p.send(Item(1))  # handed to the waiting receive ...
    task.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    got = await drain(c)
    assert [(m.value().n, m.redelivery_count) for m in got] == [(1, 0)]


async def test_async_iteration_ends_on_close(mb: MemoryBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    for n in range(3):
        await p.send(Item(n))
    seen = []
    async for m in c:
        seen.append(m.value().n)
        await c.acknowledge(m)
        if len(seen) == 3:
            asyncio.get_running_loop().call_soon(asyncio.ensure_future, c.close())
    assert seen == [0, 1, 2]


async def test_max_message_size(hub: MemoryHub) -> None:
    b = MemoryBackend(MemoryHub(max_message_size=1000))
    assert b.capabilities.max_message_size == 1000
    p = await b.create_producer(fresh(), None)
    await p.send(b"x" * 1000)
    with pytest.raises(MessageTooLargeError, match="1001 bytes.*limit of 1000"):
        await p.send(b"x" * 1001)
    assert MemoryBackend(hub).capabilities.max_message_size == 5 * 1024 * 1024


async def test_bad_input_raises_sdk_errors(mb: MemoryBackend) -> None:
    with pytest.raises(BadTopicError, match="qos"):
        await mb.create_producer("q9/tg/flow/x", Item)
    with pytest.raises(BadTopicError, match="wildcard"):
        await mb.create_consumer("q1/tg/flow/a+b", "s", Item)
    with pytest.raises(BadTopicError, match="subscription"):
        await mb.create_consumer(fresh(), "bad name", Item)
    with pytest.raises(ConfigurationError, match="consumer_type"):
        await mb.create_consumer(fresh(), "s", Item, consumer_type="key_shared")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="initial_position"):
        await mb.create_consumer(fresh(), "s", Item, initial_position="middle")  # type: ignore[arg-type]
    p = await mb.create_producer(fresh(), Item)
    with pytest.raises(TypeError, match="sends Item, got Other"):
        await p.send(Other("x"))
    with pytest.raises(TypeError, match="str -> str"):
        await p.send(Item(1), {"a": 1})  # type: ignore[dict-item]


async def test_undecodable_bytes_raise_message_decode_error(mb: MemoryBackend) -> None:
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    await (await mb.create_producer(t, None)).send(b"not json")
    m = await c.receive(timeout=1)
    with pytest.raises(MessageDecodeError, match=t):
        m.value()
    assert m.data() == b"not json"


async def test_restart_drops_clients_and_keeps_q1_data(hub: MemoryHub) -> None:
    b = MemoryBackend(hub)
    t1, t0 = fresh("q1"), fresh("q0")
    c1 = await b.create_consumer(t1, "s", Item)
    c0 = await b.create_consumer(t0, "s", Item)
    p1 = await b.create_producer(t1, Item)
    p0 = await b.create_producer(t0, Item)
    for n in range(3):
        await p1.send(Item(n))
        await p0.send(Item(n))
    held = await c1.receive(timeout=1)  # unacked across the restart
    waiting = await b.create_consumer(fresh(), "s", Item)
    pending = asyncio.create_task(waiting.receive())
    await asyncio.sleep(0)
    await hub.restart()
    with pytest.raises(ConnectionLostError):
        await pending
    with pytest.raises(ConnectionLostError):
        await c1.receive(timeout=0.1)
    with pytest.raises(ConnectionLostError):
        await c1.acknowledge(held)
    with pytest.raises(ConnectionLostError):
        await p1.send(Item(9))
    await c1.close()  # closing a lost consumer is fine
    c1 = await b.create_consumer(t1, "s", Item)
    c0 = await b.create_consumer(t0, "s", Item)
    got = [(m.value().n, m.redelivery_count) for m in await drain(c1)]
    assert got == [(0, 1), (1, 0), (2, 0)]
    assert await drain(c0) == []
    p1 = await b.create_producer(t1, Item)
    await p1.send(Item(10))
    assert [m.value().n for m in await drain(c1)] == [10]
    await b.close()


async def test_backend_close_closes_its_clients(hub: MemoryHub) -> None:
    b = MemoryBackend(hub)
    c = await b.create_consumer(fresh(), "s", Item)
    p = await b.create_producer(fresh(), Item)
    await b.close()
    await b.close()
    with pytest.raises(ClosedError):
        await c.receive(timeout=0.1)
    with pytest.raises(ClosedError):
        await p.send(Item(1))
    with pytest.raises(ClosedError, match="closed"):
        await b.create_producer(fresh(), Item)


async def test_capabilities_are_honest(mb: MemoryBackend) -> None:
    caps = mb.capabilities
    assert not caps.persistent
    assert caps.replay_from_earliest and caps.native_nack and caps.ordering
    assert caps.consumer_groups and caps.queue_lifecycle
    assert caps.consumer_types == {"shared", "exclusive", "failover"}


async def test_a_tight_send_and_receive_loop_does_not_starve_the_loop(mb: MemoryBackend) -> None:
    """Sends and receives that never wait still yield every 64 calls.

    Counted, not timed: another task gets a turn at every yield, so the count
    does not depend on how busy the machine is.
    """
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    async with LoopTurns() as turns:
        for n in range(6400):
            await p.send(Item(n))
        after_sends = turns.count
        for _ in range(6400):
            await c.acknowledge(await c.receive())
        after_receives = turns.count - after_sends
    assert after_sends >= 95, after_sends
    assert after_receives >= 95, after_receives


def test_the_hub_outlives_an_event_loop() -> None:
    """A receive left waiting on a closed loop must not break the next loop's sends."""
    hub = MemoryHub()
    t = fresh()

    async def leave_a_receive_waiting() -> None:
        c = await MemoryBackend(hub).create_consumer(t, "s", Item)
        asyncio.get_running_loop().create_task(c.receive())
        await asyncio.sleep(0)

    async def send_and_receive() -> int:
        b = MemoryBackend(hub)
        c = await b.create_consumer(t, "s", Item)
        await (await b.create_producer(t, Item)).send(Item(1))
        n: int = (await c.receive(timeout=1)).value().n
        await hub.restart()
        return n

    loop = asyncio.new_event_loop()
    loop.run_until_complete(leave_a_receive_waiting())
    loop.close()
    assert asyncio.run(send_and_receive()) == 1


async def test_a_receive_cancelled_while_it_yields_holds_nothing(mb: MemoryBackend) -> None:
    """The fast path yields to the loop every so often; a receive cancelled there
    must leave its message for the next receive, not hide it until close."""
    t = fresh()
    c = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    for i in range(200):
        await p.send(Item(i))
    got: list[int] = []
    for _ in range(200):
        task = asyncio.create_task(c.receive())
        await asyncio.sleep(0)  # runs until the receive returns or yields
        if task.done():
            m = task.result()
            got.append(m.value().n)
            await c.acknowledge(m)
        else:
            task.cancel()
            try:
                m = await task
            except asyncio.CancelledError:
                continue
            got.append(m.value().n)
            await c.acknowledge(m)
    got += [m.value().n for m in await drain(c)]
    assert sorted(got) == list(range(200)), sorted(set(range(200)) - set(got))


async def _numbers(c: Any) -> list[int]:
    return [m.value().n for m in await drain(c)]


async def test_a_backlog_is_dealt_to_shared_consumers_in_turn(mb: MemoryBackend) -> None:
    """Queued before anyone receives, a backlog is spread over the consumers, as a
    broker's dispatcher spreads it; the first to ask does not drain it all."""
    t = fresh()
    a = await mb.create_consumer(t, "s", Item)
    b = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    for i in range(10):
        await p.send(Item(i))
    got_a = await _numbers(a)
    got_b = await _numbers(b)
    assert got_a == [0, 2, 4, 6, 8] and got_b == [1, 3, 5, 7, 9]


async def test_a_consumer_holds_at_most_prefetch_of_a_backlog(mb: MemoryBackend) -> None:
    t = fresh()
    await mb.create_queue(t, "s")
    p = await mb.create_producer(t, Item)
    for i in range(10):
        await p.send(Item(i))
    a = await mb.create_consumer(t, "s", Item, prefetch=3)
    b = await mb.create_consumer(t, "s", Item, prefetch=3)
    got_a = await _numbers(a)  # b holds its 3 while a takes the rest
    assert len(got_a) == 7 and sorted(got_a + await _numbers(b)) == list(range(10))


async def test_closing_a_consumer_gives_back_what_it_held_uncounted(mb: MemoryBackend) -> None:
    t = fresh()
    a = await mb.create_consumer(t, "s", Item)
    b = await mb.create_consumer(t, "s", Item)
    p = await mb.create_producer(t, Item)
    for i in range(6):
        await p.send(Item(i))
    first = await b.receive(timeout=1)  # b received 1 (unacked) and holds 3 and 5
    await b.close()
    seen = [(m.value().n, m.redelivery_count) for m in await drain(a)]
    assert first.value().n == 1
    assert sorted(seen) == [(0, 0), (1, 1), (2, 0), (3, 0), (4, 0), (5, 0)]


def test_a_message_decodes_once_and_its_fields_are_read_only() -> None:
    from trustgraph_pubsub.backend import BaseMessage

    calls = 0

    @dataclass
    class Counted:
        n: int

        def __post_init__(self) -> None:
            nonlocal calls
            calls += 1

    m = BaseMessage(b'{"n": 3}', None, "q1/tg/x/y", Counted, 2, "h")
    assert m.value() is m.value() and m.value().n == 3 and calls == 1
    assert (m.topic, m.redelivery_count, m.properties()) == ("q1/tg/x/y", 2, {})
    raw = BaseMessage(b"", None, "q1/tg/x/y", None)  # no schema: the bytes, even empty ones
    assert raw.value() == b"" and raw.value() is raw.data()
    with pytest.raises(AttributeError):
        m.redelivery_count = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        m.topic = "other"  # type: ignore[misc]
