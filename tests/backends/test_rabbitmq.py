"""The RabbitMQ backend against the real broker (RABBITMQ_HOST/PORT, default 127.0.0.1:5672).

These cover what the conformance battery does not look at: the native
topology (quorum/classic queues, the registry), the redelivery count, the
republishing of unconfirmed messages after a dropped connection, credentials
that need escaping, and the poison-message path through ``Consumer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pika
import pytest

from tests.brokers import Broker
from tests.brokers.rabbitmq import HOST, RabbitMQBroker, rabbitmqctl
from trustgraph_pubsub import (
    AuthenticationError,
    BadTopicError,
    BrokerConnectionError,
    ClosedError,
    ConfigurationError,
    ConnectionLostError,
    Message,
    MessageTooLargeError,
    PubSubTimeoutError,
    UnsupportedError,
    naming,
)
from trustgraph_pubsub.backends import rabbitmq as rmq
from trustgraph_pubsub.backends.rabbitmq import RabbitMQBackend
from trustgraph_schema.topic import topic

pytestmark = pytest.mark.timeout(120)


@dataclass
class Item:
    n: int
    text: str = ""


class Names:
    """Fresh topic names for one test; every one is deleted afterwards."""

    def __init__(self) -> None:
        self.uid = uuid.uuid4().hex[:10]
        self.made: list[str] = []

    def topic(self, label: str, qos: str = "q1") -> str:
        name = topic(f"rb-{self.uid}-{label}", qos=qos, tenant="tg", namespace="rabbit")
        self.made += [name, naming.dead_letter_topic(name)]
        return name


@pytest.fixture
def rabbit(broker_registry: Any) -> Broker:
    return broker_registry.get("rabbitmq")  # type: ignore[no-any-return]


@pytest.fixture
async def backend(rabbit: Broker) -> AsyncIterator[RabbitMQBackend]:
    b = rabbit.make_backend()
    assert isinstance(b, RabbitMQBackend)
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def names(rabbit: Broker) -> AsyncIterator[Names]:
    """Names for the test; its topics are deleted however the test ends."""
    n = Names()
    yield n
    cleaner = rabbit.make_backend()
    try:
        for name in n.made:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cleaner.delete_queue(name), 30)
    finally:
        await cleaner.close()


async def drain(consumer: Any, want: int, within: float = 20.0, ack: bool = True) -> list[Message]:
    """Receive ``want`` messages (fewer if ``within`` seconds pass)."""
    out: list[Message] = []
    deadline = time.monotonic() + within
    while len(out) < want and time.monotonic() < deadline:
        try:
            msg = await consumer.receive(timeout=max(0.1, deadline - time.monotonic()))
        except PubSubTimeoutError:
            break
        out.append(msg)
        if ack:
            await consumer.acknowledge(msg)
    return out


async def exchange_exists(backend: RabbitMQBackend, exchange: str) -> bool:
    chan = await backend._scratch("test: exchange lookup")
    rmq._LOOKUPS.channels.add(chan.ch)
    try:
        await chan.call(chan.ch.exchange_declare, exchange, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    finally:
        await chan.close()


def kill_socket(backend: RabbitMQBackend) -> None:
    """Cut the TCP connection under pika: it reads EOF, as after a network failure."""
    sock = backend._conn._transport._sock
    sock.shutdown(socket.SHUT_RDWR)


# -- messages -------------------------------------------------------------------------


@pytest.mark.parametrize("qos", ["q0", "q1", "q2"])
async def test_round_trip_each_qos(backend: RabbitMQBackend, names: Names, qos: str) -> None:
    name = names.topic("rt", qos)
    c = await backend.create_consumer(name, "s", Item)
    p = await backend.create_producer(name, Item)
    for i in range(50):
        await p.send(Item(i, "é✓"), {"i": str(i), "empty": ""} if i % 2 else None, key=f"k{i % 3}")
    await p.flush()
    got = await drain(c, 50)
    assert [m.value().n for m in got] == list(range(50)), "one producer, one consumer: in order"
    for m in got:
        n = m.value().n
        assert m.value() == Item(n, "é✓")
        assert m.properties() == ({"i": str(n), "empty": ""} if n % 2 else {})
        assert m.topic == name
        assert m.redelivery_count == 0
    await p.close()
    await c.unsubscribe()
    await backend.delete_queue(name)


async def test_latency_bound_sends_leave_nothing_queued(backend: RabbitMQBackend, names: Names) -> None:
    """Requests and replies are on the wire when ``send`` returns; streams are
    left for pika to write, coalesced, on the next loop iteration."""
    name = names.topic("eager", "q0")
    c = await backend.create_consumer(name, "s", Item)
    eager = await backend.create_producer(name, Item, latency_bound=True)
    stream = await backend.create_producer(name, Item)
    tx = backend._conn._transport._tx_buffers
    await stream.send(Item(1))
    assert tx, "a stream send waits for the next loop iteration to be written"
    await eager.send(Item(2))
    assert not tx, "a latency-bound send (and what was queued before it) is written at once"
    got = await drain(c, 2)
    # Both arrive; their order is not asserted: the two producers publish on
    # different channels, which RabbitMQ does not order against each other
    # (seen once as [2, 1] with both frames written in order).
    assert sorted(m.value().n for m in got) == [1, 2]


async def test_a_burst_of_latency_bound_sends_is_written_once_per_iteration(
    backend: RabbitMQBackend, names: Names
) -> None:
    """The first latency-bound send of a loop iteration is written at once; the
    rest of the burst waits for pika's next write, joined into one (a push per
    send cost a system call and two epoll changes per message)."""
    name = names.topic("burst", "q0")
    c = await backend.create_consumer(name, "s", Item)
    eager = await backend.create_producer(name, Item, latency_bound=True)
    tx = backend._conn._transport._tx_buffers
    await asyncio.sleep(0)  # a fresh iteration
    await eager.send(Item(1))
    assert not tx, "the first send of an iteration is on the wire"
    for i in range(2, 12):
        await eager.send(Item(i))  # never suspends: the same iteration
    assert tx, "later sends of the same iteration wait for the next write"
    got = await drain(c, 11)
    assert sorted(m.value().n for m in got) == list(range(1, 12))


async def test_topology_is_quorum_for_q1_and_classic_for_q0(
    backend: RabbitMQBackend, names: Names
) -> None:
    durable, transient = names.topic("dur", "q1"), names.topic("tra", "q0")
    await backend.create_queue(durable, "s")
    await backend.create_queue(transient, "s")
    out = await rabbitmqctl_or_skip("list_queues", "name", "type", "durable", "--no-table-headers")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows[naming.rabbitmq_queue(durable, "s")] == ["quorum", "true"]
    assert rows[naming.rabbitmq_queue(transient, "s")] == ["classic", "false"]
    await backend.delete_queue(durable)
    await backend.delete_queue(transient)


async def rabbitmqctl_or_skip(*args: str) -> str:
    if not RabbitMQBroker.can_restart:
        pytest.skip("rabbitmqctl is not usable here (remote broker or no Erlang cookie)")
    return await rabbitmqctl(*args)


@pytest.mark.parametrize("qos", ["q0", "q1"])
async def test_nack_redelivers_with_a_count(backend: RabbitMQBackend, names: Names, qos: str) -> None:
    name = names.topic("nack", qos)
    c = await backend.create_consumer(name, "s", Item)
    p = await backend.create_producer(name, Item)
    await p.send(Item(1), {"trace": "t"})
    await p.send(Item(2))
    await p.flush()
    counts = []
    for _ in range(4):
        m = await c.receive(timeout=10)
        if m.value().n == 2:
            await c.acknowledge(m)
            m = await c.receive(timeout=10)
        assert m.value().n == 1
        assert m.properties() == {"trace": "t"}, "broker headers must not leak into properties"
        counts.append(m.redelivery_count)
        await c.negative_acknowledge(m)
    assert counts == [0, 1, 2, 3]
    await c.unsubscribe()
    await backend.delete_queue(name)


async def test_close_with_prefetched_messages_does_not_count(
    backend: RabbitMQBackend, names: Names
) -> None:
    """A consumer closing with messages prefetched is not a failed delivery."""
    name = names.topic("ret")
    p = await backend.create_producer(name, Item)
    await backend.create_queue(name, "s")
    for i in range(5):
        await p.send(Item(i))
    await p.flush()
    for _ in range(4):
        c = await backend.create_consumer(name, "s", Item, prefetch=5)
        m = await c.receive(timeout=10)
        assert m.redelivery_count == 0
        await c.close()
    c = await backend.create_consumer(name, "s", Item)
    got = await drain(c, 5)
    assert sorted(m.value().n for m in got) == list(range(5))
    assert all(m.redelivery_count == 0 for m in got)
    await backend.delete_queue(name)


async def test_settling_is_idempotent_and_per_consumer(backend: RabbitMQBackend, names: Names) -> None:
    name = names.topic("ack")
    a = await backend.create_consumer(name, "a", Item)
    b = await backend.create_consumer(name, "b", Item)
    p = await backend.create_producer(name, Item)
    for i in range(3):
        await p.send(Item(i))
    await p.flush()
    ma = await a.receive(timeout=10)
    mb = await b.receive(timeout=10)
    assert ma.handle == mb.handle == 1
    # Both carry delivery tag 1 on their own channels: settling b's message through
    # a, while a's own is still outstanding, must not settle a's.
    await a.acknowledge(mb)  # another consumer's message: a no-op
    with pytest.raises(TypeError):
        await a.acknowledge("not a message")
    await a.close()  # a's message 0 was never settled: it comes back
    a = await backend.create_consumer(name, "a", Item)
    again = await drain(a, 3)
    assert [m.value().n for m in again] == [0, 1, 2], "acking b's message settled a's"
    await a.acknowledge(again[0])  # twice: a no-op, not a channel error
    await a.negative_acknowledge(again[0])  # already settled: a no-op
    await a.close()
    a = await backend.create_consumer(name, "a", Item)
    assert await drain(a, 1, within=1.0) == [], "the channel survived the odd settles"
    await b.acknowledge(mb)
    await backend.delete_queue(name)


async def test_acks_written_late_still_reach_the_broker(backend: RabbitMQBackend, names: Names) -> None:
    """Acks go out at the next turn of the loop; a close, unsubscribe-free reopen or
    a nack right after them must not leave them unsent."""
    name = names.topic("lateack")
    c = await backend.create_consumer(name, "s", Item, prefetch=50)
    p = await backend.create_producer(name, Item)
    for i in range(20):
        await p.send(Item(i))
    await p.flush()
    got = [await c.receive(timeout=10) for _ in range(20)]
    for m in got[:10]:
        await c.acknowledge(m)
    await c.negative_acknowledge(got[10])  # after the acks: they must be written first
    for m in got[11:]:
        await c.acknowledge(m)
    await c.close()  # same turn of the loop as the last acks
    c = await backend.create_consumer(name, "s", Item)
    back = await drain(c, 20, within=3.0)
    assert [m.value().n for m in back] == [10], [m.value().n for m in back]
    assert back[0].redelivery_count == 1


async def test_a_consumer_that_crashes_before_settling_is_bounded(
    rabbit: Broker, names: Names
) -> None:
    """Closing without a settle (what a crash does) is counted on quorum queues:
    every ``returns_per_redelivery`` returns add one to the redelivery count, and
    ``Consumer`` dead-letters a message over the limit without running its handler."""
    from trustgraph_pubsub.consumer import Consumer

    b = rabbit.make_backend(rabbitmq_returns_per_redelivery=2)
    try:
        name = names.topic("crash")
        c = await b.create_consumer(name, "s", Item, prefetch=1)
        p = await b.create_producer(name, Item)
        await p.send(Item(7))
        await p.flush()
        counts = []
        for _ in range(5):
            m = await c.receive(timeout=10)
            counts.append(m.redelivery_count)
            await c.close()  # "crash": no ack, no nack
            c = await b.create_consumer(name, "s", Item, prefetch=1)
        await c.close()
        assert counts == [0, 0, 1, 1, 2], counts

        handled: list[int] = []

        async def handler(msg: Message) -> None:
            handled.append(msg.value().n)

        dlq = await b.create_consumer(naming.dead_letter_topic(name), "watch", None)
        async with Consumer(b, name, "s", Item, handler, max_redeliveries=1):
            dead = await dlq.receive(timeout=20)
        assert handled == [], "a message over the limit reached its handler again"
        assert int(dead.properties()["x-dlq-deliveries"]) >= 3
        assert "never settled" in dead.properties()["x-dlq-error"]
        await dlq.acknowledge(dead)
        await dlq.close()
    finally:
        await b.close()


async def test_competing_and_fan_out(backend: RabbitMQBackend, names: Names) -> None:
    name = names.topic("fan")
    shared = [await backend.create_consumer(name, "shared", Item, prefetch=5) for _ in range(2)]
    solo = await backend.create_consumer(name, "solo", Item)
    p = await backend.create_producer(name, Item)
    for i in range(100):
        await p.send(Item(i))
    await p.flush()

    seen: Counter[int] = Counter()
    per = [0, 0]

    async def work(k: int) -> None:
        while sum(per) < 100:
            try:
                m = await shared[k].receive(timeout=2)
            except PubSubTimeoutError:
                return
            seen[m.value().n] += 1
            per[k] += 1
            await asyncio.sleep(0.001)
            await shared[k].acknowledge(m)

    await asyncio.gather(work(0), work(1))
    assert sorted(seen) == list(range(100)) and max(seen.values()) == 1
    assert all(per), f"both shared consumers got work: {per}"
    assert sorted(m.value().n for m in await drain(solo, 100)) == list(range(100))
    await backend.delete_queue(name)


async def test_receive_timeout_and_cancel(backend: RabbitMQBackend, names: Names) -> None:
    name = names.topic("idle")
    c = await backend.create_consumer(name, "s", Item)
    t0 = time.monotonic()
    with pytest.raises(PubSubTimeoutError) as err:
        await c.receive(timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 3
    assert name in str(err.value)
    task = asyncio.create_task(c.receive())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    p = await backend.create_producer(name, Item)
    await p.send(Item(7))
    await p.flush()
    m = await c.receive(timeout=10)
    assert m.value().n == 7, "a cancelled receive does not swallow the next message"
    await c.acknowledge(m)
    await backend.delete_queue(name)


async def test_too_large_is_refused_before_sending(
    backend: RabbitMQBackend, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rmq.producer, "MAX_MESSAGE_SIZE", 1000)  # read by producer.py
    name = names.topic("big")
    p = await backend.create_producer(name, None)
    with pytest.raises(MessageTooLargeError) as err:
        await p.send(b"x" * 1001)
    assert name in str(err.value)
    await p.send(b"x" * 1000)
    await p.flush()
    await backend.delete_queue(name)


# -- queue lifecycle --------------------------------------------------------------------


async def test_delete_topic_leaves_nothing(backend: RabbitMQBackend, names: Names) -> None:
    name = names.topic("life")
    exchange = naming.rabbitmq_exchange(name)
    registry = naming.rabbitmq_registry_queue(name)
    await backend.create_queue(name, "a")
    await backend.ensure_queue(name, "a")
    c = await backend.create_consumer(name, "b", Item)
    await backend.create_queue(name, "c")
    await backend.delete_queue(name, "c")
    await backend.ensure_queue(name, "c")  # deleted and created again
    for sub in "abc":
        assert await backend.queue_exists(name, sub)
    assert await exchange_exists(backend, exchange)

    await backend.delete_queue(name)
    for sub in "abc":
        assert not await backend.queue_exists(name, sub), sub
    assert not await backend._passive_declare(registry)
    assert not await exchange_exists(backend, exchange)
    # The consumer on a deleted queue ends, it does not hang.
    with pytest.raises(ClosedError) as err:
        await c.receive(timeout=10)
    assert "deleted" in str(err.value)
    await backend.delete_queue(name)  # nothing left to delete: not an error


async def test_qos_conflict_names_the_queue(backend: RabbitMQBackend, names: Names) -> None:
    q0 = names.topic("clash", "q0")
    q1 = q0.replace("q0/", "q1/", 1)
    await backend.create_queue(q0, "s")
    with pytest.raises(ConfigurationError) as err:
        await backend.create_consumer(q1, "s", Item)
    text = str(err.value)
    assert naming.rabbitmq_queue(q1, "s") in text and "qos" in text, text
    await backend.delete_queue(q0)


async def test_bad_names_and_options(backend: RabbitMQBackend, names: Names) -> None:
    long = names.topic("x" * 250)
    with pytest.raises(BadTopicError) as err:
        await backend.create_producer(long, Item)
    assert "255" in str(err.value)
    name = names.topic("opts")
    with pytest.raises(ConfigurationError):
        await backend.create_consumer(name, "s", Item, prefetch=0)
    with pytest.raises(ConfigurationError):
        RabbitMQBackend(port=0)


async def test_only_shared_consumers(backend: RabbitMQBackend, names: Names) -> None:
    """Quorum queues ignore exclusive consumers, so the backend refuses to pretend."""
    assert backend.capabilities.consumer_types == {"shared"}
    for kind in ("exclusive", "failover"):
        with pytest.raises(UnsupportedError) as err:
            await backend.create_consumer(names.topic("excl"), "s", Item, consumer_type=kind)
        assert kind in str(err.value) and "consumer_types" in str(err.value)


# -- connections and credentials -----------------------------------------------------------


async def test_refused_and_bad_credentials(
    rabbit: Broker, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # pika's own DEBUG output included
    config = rabbit.refused_config()
    refused = rabbit.make_backend(**config)
    t0 = time.monotonic()
    with pytest.raises(BrokerConnectionError) as err:
        await refused.create_producer(names.topic("x"), Item)
    assert time.monotonic() - t0 < 5
    assert not isinstance(err.value, ConnectionLostError), "never connected: not 'lost'"
    assert f"127.0.0.1:{config['rabbitmq_port']}" in str(err.value)
    assert "refused" in str(err.value).lower()
    await refused.close()

    bad = rabbit.bad_credentials_config()
    assert bad is not None
    b = rabbit.make_backend(**bad)
    with pytest.raises(AuthenticationError) as aerr:
        await b.create_consumer(names.topic("x"), "s", Item)
    text = str(aerr.value)
    assert repr(bad["rabbitmq_username"]) in text and HOST in text, text
    for shown in (text, repr(aerr.value), repr(b), str(aerr.value.__cause__)):
        assert bad["rabbitmq_password"] not in shown
    await b.close()
    assert "ACCESS_REFUSED" in caplog.text, "the log capture saw pika's output"
    assert bad["rabbitmq_password"] not in caplog.text, "the password reached a log line"


async def test_password_that_needs_escaping(
    rabbit: Broker, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = f"tg-test-{names.uid}"
    password = "p@ss:w/rd%20?#&=+ é"
    await rabbitmqctl_or_skip("add_user", user, password)
    try:
        await rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        b = rabbit.make_backend(rabbitmq_username=user, rabbitmq_password=password)
        try:
            name = names.topic("esc")
            c = await b.create_consumer(name, "s", Item)
            p = await b.create_producer(name, Item)
            await p.send(Item(1))
            await p.flush()
            assert (await c.receive(timeout=10)).value() == Item(1)
            assert password not in repr(b)
            await b.delete_queue(name)
            assert password not in caplog.text
        finally:
            await b.close()
    finally:
        await rabbitmqctl("delete_user", user)


async def test_dropped_connection_fails_pending_calls_and_reconnects(
    backend: RabbitMQBackend, names: Names
) -> None:
    name = names.topic("drop")
    c = await backend.create_consumer(name, "s", Item)
    p = await backend.create_producer(name, Item, latency_bound=True)
    pending = asyncio.create_task(c.receive())
    await asyncio.sleep(0.05)
    kill_socket(backend)
    t0 = time.monotonic()
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(pending, 5)
    assert time.monotonic() - t0 < 2, "a pending receive must fail promptly"
    with pytest.raises(ConnectionLostError):
        await c.receive(timeout=1)

    # The producer reconnects by itself; a new consumer can be created.
    c2 = await backend.create_consumer(name, "s", Item)
    await p.send(Item(5))
    await p.flush()
    assert (await c2.receive(timeout=10)).value() == Item(5)
    await backend.delete_queue(name)


async def test_unsubscribe_after_a_dropped_connection_still_deletes(
    backend: RabbitMQBackend, names: Names
) -> None:
    name = names.topic("unsub")
    c = await backend.create_consumer(name, "s", Item)
    kill_socket(backend)
    with pytest.raises(ConnectionLostError):
        await c.receive(timeout=5)
    await c.unsubscribe()  # over a new connection
    assert not await backend.queue_exists(name, "s")
    with pytest.raises(ClosedError):
        await c.unsubscribe()
    await backend.delete_queue(name)


async def test_unconfirmed_messages_survive_a_dropped_connection(
    backend: RabbitMQBackend, names: Names
) -> None:
    """q1 sends that were in flight when the connection died are published again."""
    name = names.topic("inflight")
    await backend.create_queue(name, "s")
    p = await backend.create_producer(name, Item)
    n = 3000
    for i in range(n):
        await p.send(Item(i, "x" * 200))
    assert isinstance(p, rmq.RabbitMQProducer)
    in_flight = p.unconfirmed
    kill_socket(backend)
    with pytest.raises(ConnectionLostError):
        await p.flush()  # pending when the connection died: fails at once
    assert p.unconfirmed > 0, "unconfirmed messages are kept for republishing"
    await p.flush()  # reconnects and republishes what was not confirmed
    assert p.unconfirmed == 0
    c = await backend.create_consumer(name, "s", Item, prefetch=500)
    got = await drain(c, n, within=60)
    got += await drain(c, n, within=1.0)  # duplicates are allowed, loss is not
    missing = set(range(n)) - {m.value().n for m in got}
    assert not missing, f"{len(missing)} lost ({in_flight} were unconfirmed at the drop)"
    assert in_flight > 0, "nothing was in flight: the test proved nothing"
    await backend.delete_queue(name)


async def test_broker_side_close_is_reported(backend: RabbitMQBackend, names: Names) -> None:
    """The broker closing our connection (rabbitmqctl close_connection) ends pending calls."""
    name = names.topic("forced")
    c = await backend.create_consumer(name, "s", Item)
    out = await rabbitmqctl_or_skip("list_connections", "pid", "client_properties",
                                    "--no-table-headers")
    ours = [line.split()[0] for line in out.splitlines() if backend._connection_name in line]
    assert len(ours) == 1, out
    pending = asyncio.create_task(c.receive())
    await rabbitmqctl("close_connection", ours[0], "test")
    with pytest.raises(ConnectionLostError) as err:
        await asyncio.wait_for(pending, 10)
    assert "320" in str(err.value) or "CONNECTION_FORCED" in str(err.value)
    c2 = await backend.create_consumer(name, "s", Item)
    await c2.close()
    await backend.delete_queue(name)


# -- with the resilient Consumer ------------------------------------------------------------


async def test_poison_message_reaches_the_dead_letter_topic(
    backend: RabbitMQBackend, names: Names
) -> None:
    from trustgraph_pubsub.consumer import Consumer

    max_redeliveries = 2
    name = names.topic("poison")
    dlq = naming.dead_letter_topic(name)
    dead = await backend.create_consumer(dlq, "dlq", None)
    calls: Counter[int] = Counter()
    all_seen = asyncio.Event()

    async def handler(msg: Message) -> None:
        n = msg.value().n
        calls[n] += 1
        if len(calls) == 21:
            all_seen.set()
        if n == 666:
            raise ValueError("poison")

    consumer = Consumer(backend, name, "s", Item, handler, max_redeliveries=max_redeliveries,
                        concurrency=4)
    await consumer.start()
    try:
        p = await backend.create_producer(name, Item)
        await p.send(Item(666), {"trace": "t-9"})
        for i in range(20):
            await p.send(Item(i))
        await p.flush()
        letters = await drain(dead, 1, within=30)
        assert len(letters) == 1, "the poison message never reached the dead-letter topic"
        props = letters[0].properties()
        assert props["trace"] == "t-9" and props["x-dlq-error-type"] == "ValueError"
        assert props["x-dlq-deliveries"] == str(max_redeliveries + 1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_seen.wait(), 20)
        assert set(calls) == set(range(20)) | {666}, "the stream behind the poison stalled"
        assert calls[666] == max_redeliveries + 1
        assert await drain(dead, 1, within=1.0) == [], "dead-lettered once only"
    finally:
        await consumer.stop()
    # It stays dead: nothing comes back to the subscription.
    again = await backend.create_consumer(name, "s", Item)
    assert await drain(again, 1, within=1.0) == []
    await backend.delete_queue(name)
    await backend.delete_queue(dlq)


@pytest.mark.slow
async def test_burst_in_flight_across_a_broker_restart(
    rabbit: Broker, backend: RabbitMQBackend, names: Names
) -> None:
    """A q1 burst is cut by stop_app; after start_app every message arrives."""
    if not rabbit.can_restart:
        pytest.skip("the rabbitmq fixture cannot restart its broker (can_restart)")
    name = names.topic("burst")
    await backend.create_queue(name, "s")
    p = await backend.create_producer(name, Item)
    assert isinstance(p, rmq.RabbitMQProducer)
    restart = asyncio.create_task(rabbit.restart())
    sent = 0
    at_drop = -1
    after_drop = 0
    give_up = time.monotonic() + 90
    # Send until the restart cuts the stream, then 1,000 more once it is back.
    while after_drop < 1000 and time.monotonic() < give_up:
        try:
            await p.send(Item(sent, "y" * 100))
            sent += 1
            if at_drop >= 0:
                after_drop += 1
            if sent % 200 == 0:
                await asyncio.sleep(0.01)  # a stream, not one burst that ends before the cut
        except ConnectionLostError:
            if at_drop < 0:
                at_drop = p.unconfirmed
            await asyncio.sleep(0.2)  # the resilient Producer would back off here
    n = sent
    await asyncio.wait_for(restart, 180)
    deadline = time.monotonic() + 60
    while True:
        try:
            await p.flush()
            break
        except ConnectionLostError:
            assert time.monotonic() < deadline, "never reconnected"
            await asyncio.sleep(0.2)
    c = await backend.create_consumer(name, "s", Item, prefetch=1000)
    seen = {m.value().n for m in await drain(c, n, within=120)}
    seen |= {m.value().n for m in await drain(c, n, within=1.0)}
    missing = set(range(n)) - seen
    assert not missing, f"{len(missing)} of {n} lost ({at_drop} unconfirmed at the drop)"
    print(f"{n} sent, {at_drop} unconfirmed when the broker closed the connection, none lost")
    assert at_drop != -1, "the restart did not cut the burst: the test proved nothing"
    await backend.delete_queue(name)
