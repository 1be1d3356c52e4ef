"""What ``Producer`` and ``Publisher`` do with messages a backend failed.

A scripted backend stands in for a pipelining broker client: it accepts
sends, and on cue fails the ones it holds, the way the Pulsar and Kafka
backends do (an error whose ``unconfirmed`` lists them).  The real brokers
are forced down this path in ``tests/backends/test_loss_paths.py``.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from trustgraph_pubsub import (
    AuthenticationError,
    ConnectionLostError,
    DeliveryError,
    Producer,
    Publisher,
)
from trustgraph_pubsub.errors import Outgoing, PubSubError
from trustgraph_pubsub.retry import Backoff

TOPIC = "q1/tg/test/delivery"


class _Scripted:
    """One backend producer: holds sends until ``flush``; ``fail`` ends them."""

    def __init__(self, broker: _Broker) -> None:
        self.broker = broker
        self.held: list[Outgoing] = []
        self.error: PubSubError | None = None
        self.closed = False

    def fail(self, error: PubSubError) -> None:
        error.unconfirmed, self.held = tuple(self.held), []
        self.error = error

    async def send(self, data: bytes, properties: Any = None, *, key: str | None = None) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        if self.broker.refuse_sends:
            raise AuthenticationError(f"not allowed to publish to {TOPIC}")
        self.held.append((data, dict(properties) if properties else None, key))
        if self.broker.fail_after is not None and len(self.held) >= self.broker.fail_after:
            self.broker.fail_after = None
            self.fail(self.broker.failure())

    async def flush(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        self.broker.confirmed.extend(self.held)
        self.held = []

    async def close(self) -> None:
        self.closed = True
        await self.flush()


class _Broker:
    """The backend: makes ``_Scripted`` producers and keeps what they confirmed."""

    name = "scripted"
    capabilities = SimpleNamespace(max_message_size=1 << 20)

    def __init__(self) -> None:
        self.producers: list[_Scripted] = []
        self.confirmed: list[Outgoing] = []
        self.fail_after: int | None = None
        self.refuse_sends = False
        self.failure: Any = lambda: ConnectionLostError("lost the broker")

    async def create_producer(self, topic: str, schema: Any, **opts: Any) -> _Scripted:
        p = _Scripted(self)
        self.producers.append(p)
        return p

    def ids(self) -> list[int]:
        return [int(d) for d, _, _ in self.confirmed]


def _fast() -> Backoff:
    return Backoff(base=0.001, cap=0.01)


async def test_a_lost_window_is_sent_again_before_anything_new(caplog: Any) -> None:
    b = _Broker()
    p = Producer(b, TOPIC, None, backoff=_fast())
    for i in range(5):
        await p.send(str(i).encode())
    await p.flush()
    b.fail_after = 3  # the window of 3 ends in a lost connection...
    with caplog.at_level(logging.WARNING):
        for i in range(5, 20):
            await p.send(str(i).encode(), {"k": "v"})
        await p.flush()
    await p.close()
    # ...and every message arrives once, in order: nothing was confirmed twice here.
    assert b.ids() == list(range(20))
    assert len(b.producers) == 2 and b.producers[0].closed
    assert "sending again 3 message(s)" in caplog.text
    assert b.confirmed[5][1] == {"k": "v"}


async def test_a_lost_window_found_by_flush_is_sent_again() -> None:
    b = _Broker()
    p = Producer(b, TOPIC, None, backoff=_fast())
    for i in range(4):
        await p.send(str(i).encode())
    b.producers[0].fail(ConnectionLostError("lost the broker"))
    await p.flush()
    assert b.ids() == [0, 1, 2, 3]
    await p.close()


async def test_a_refusal_that_ended_a_window_is_raised_with_the_count() -> None:
    b = _Broker()
    b.failure = lambda: AuthenticationError("no right to publish")
    p = Producer(b, TOPIC, None, backoff=_fast())
    b.fail_after = 4
    for i in range(4):
        await p.send(str(i).encode())
    with pytest.raises(AuthenticationError) as err:
        await p.send(b"4")
    assert len(err.value.unconfirmed) == 4  # the caller gets the messages, not a silence
    await p.send(b"5")  # a new backend producer; the refused ones are the caller's now
    await p.close()
    assert b.ids() == [5]


async def test_close_counts_what_it_could_not_send() -> None:
    b = _Broker()
    p = Producer(b, TOPIC, None, backoff=_fast(), send_deadline=0.2)
    for i in range(3):
        await p.send(str(i).encode())
    b.producers[0].fail(ConnectionLostError("lost the broker"))
    b.refuse_sends = False

    async def broken(topic: str, schema: Any, **opts: Any) -> _Scripted:
        raise ConnectionLostError("still no broker")

    b.create_producer = broken  # type: ignore[method-assign]
    with pytest.raises(DeliveryError) as err:
        await p.close()
    assert err.value.count == 3
    assert "3 message(s)" in str(err.value)


async def test_publisher_surfaces_refusals_from_flush_and_close(caplog: Any) -> None:
    b = _Broker()
    pub = Publisher(b, TOPIC, None)
    await pub.publish(b"0")
    await pub.flush()
    b.refuse_sends = True
    with caplog.at_level(logging.ERROR):
        await pub.publish(b"1")
        await pub.publish(b"2")
        with pytest.raises(DeliveryError) as err:
            await pub.flush()
    assert err.value.count == 2
    assert "refused" in caplog.text
    assert pub.refused == 0  # reported once
    b.refuse_sends = False
    await pub.publish(b"3")
    await pub.flush()
    b.refuse_sends = True
    await pub.publish(b"4")
    with pytest.raises(DeliveryError) as err:
        await pub.close()
    assert err.value.count == 1
    assert b.ids() == [0, 3]


async def test_publisher_counts_a_window_a_deferred_refusal_ended() -> None:
    b = _Broker()
    b.failure = lambda: AuthenticationError("deferred rejection")
    pub = Publisher(b, TOPIC, None)
    for i in range(3):
        await pub.publish(str(i).encode())
    await pub.flush()
    b.fail_after = 2
    for i in range(3, 8):
        await pub.publish(str(i).encode())
    with pytest.raises(DeliveryError) as err:
        await pub.flush()
    # 3 and 4 were ended by the refusal, 5 was the send that met it.
    assert err.value.count == 3
    await pub.close()
    assert b.ids() == [0, 1, 2, 6, 7]
