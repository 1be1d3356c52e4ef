"""The in-process "broker" itself: topics, their retained logs, subscriptions.

Only this backend carries its broker: ``MemoryHub`` holds every topic (keyed
by identity), its retained log and its durable subscriptions, and the open
producers and consumers, so that ``restart()`` can drop them as a real broker
restart would.  ``_Subscription.dispatch`` is the broker's round-robin (or
failover) push into the consumers' receive queues.  The semantics are in the
package docstring; the clients that talk to the hub are in ``producer.py`` and
``consumer.py``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trustgraph_schema.topic import Topic

from ...errors import ClosedError, ConnectionLostError, PubSubError
from .config import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_RETAIN

if TYPE_CHECKING:
    from .consumer import MemoryConsumer
    from .producer import MemoryProducer


@dataclass(slots=True)
class _Entry:
    """One published message, shared by every subscription that holds it."""

    data: bytes
    properties: dict[str, str]
    key: str | None


@dataclass(slots=True)
class _Delivery:
    """A message queued on (or handed out by) one subscription."""

    entry: _Entry
    redeliveries: int = 0


@dataclass(eq=False)
class _Subscription:
    name: str
    topic: _Topic
    consumer_type: str = "shared"
    #: removed when its last consumer leaves (``create_consumer(ephemeral=True)``)
    ephemeral: bool = False
    ready: deque[_Delivery] = field(default_factory=deque)
    consumers: list[MemoryConsumer] = field(default_factory=list)
    #: index into ``consumers`` of the next one in turn
    turn: int = 0

    def dispatch(self) -> None:
        """Move ready messages into consumers' receive queues, one consumer after another."""
        for gone in [c for c in self.consumers if c.loop_closed()]:
            # Its event loop is gone, as a dead client's connection would be:
            # drop it, and what it held goes back to the others.
            gone._drop(ConnectionLostError(f"consumer on {gone.topic}: its event loop is closed"))
        while self.ready and self.consumers:
            if self.consumer_type == "failover":
                order = self.consumers[:1]
            else:
                n = len(self.consumers)
                order = [self.consumers[(self.turn + i) % n] for i in range(n)]
            for i, consumer in enumerate(order):
                if consumer.has_room():
                    if self.consumer_type != "failover":
                        self.turn = (self.turn + i + 1) % len(self.consumers)
                    consumer.deliver(self.ready.popleft())
                    break
            else:
                return  # every receive queue is full

    def nacked(self, delivery: _Delivery) -> None:
        """A nacked message goes to the back, one more redelivery counted."""
        delivery.redeliveries += 1
        self.ready.append(delivery)
        self.dispatch()


@dataclass(eq=False)
class _Topic:
    identity: str
    qos: str
    retain: int | None
    log: deque[_Entry] = field(init=False)
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log = deque(maxlen=self.retain)

    @property
    def durable(self) -> bool:
        return self.qos != "q0"


class MemoryHub:
    """The in-process "broker": topics, subscriptions and open clients.

    ``retain`` caps the messages a q1/q2 topic keeps for ``earliest`` replay
    (None keeps everything); ``max_message_size`` is the payload limit.
    """

    def __init__(
        self,
        *,
        retain: int | None = DEFAULT_RETAIN,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.retain = retain
        self.max_message_size = max_message_size
        self._topics: dict[str, _Topic] = {}
        self._producers: set[MemoryProducer] = set()
        self._consumers: set[MemoryConsumer] = set()
        self.restarts = 0

    # -- topics -------------------------------------------------------------

    def _topic(self, t: Topic, *, create: bool = True) -> _Topic | None:
        found = self._topics.get(t.identity)
        if found is None and create:
            found = _Topic(t.identity, t.qos, self.retain if t.qos != "q0" else 0)
            self._topics[t.identity] = found
        return found

    def _publish(self, t: Topic, entry: _Entry) -> None:
        topic = self._topic(t)
        assert topic is not None
        if topic.durable:
            topic.log.append(entry)
        for sub in topic.subscriptions.values():
            sub.ready.append(_Delivery(entry))
            sub.dispatch()

    def _subscribe(
        self,
        consumer: MemoryConsumer,
        t: Topic,
        initial_position: str,
        consumer_type: str,
        ephemeral: bool = False,
    ) -> _Subscription:
        topic = self._topic(t)
        assert topic is not None
        sub = topic.subscriptions.get(consumer.subscription)
        if sub is not None and ephemeral and not sub.ephemeral:
            raise PubSubError(
                f"subscription {sub.name!r} on topic {consumer.topic!r} is durable; an "
                "ephemeral consumer needs a subscription of its own (use another name)"
            )
        if sub is None:
            sub = _Subscription(consumer.subscription, topic, consumer_type, ephemeral)
            if initial_position == "earliest":
                sub.ready.extend(_Delivery(e) for e in topic.log)
            topic.subscriptions[sub.name] = sub
        elif sub.consumers:
            if sub.consumer_type == "exclusive" or consumer_type == "exclusive":
                raise PubSubError(
                    f"subscription {sub.name!r} on topic {consumer.topic!r} already has "
                    f"{'an exclusive' if sub.consumer_type == 'exclusive' else 'a ' + sub.consumer_type} "
                    "consumer; close it first, or use another subscription name or "
                    "consumer_type='shared'/'failover'"
                )
            if sub.consumer_type != consumer_type:
                raise PubSubError(
                    f"subscription {sub.name!r} on topic {consumer.topic!r} has "
                    f"{sub.consumer_type} consumers; a {consumer_type} consumer cannot join "
                    "(use the same consumer_type or another subscription)"
                )
        else:
            sub.consumer_type = consumer_type
        sub.consumers.append(consumer)
        self._consumers.add(consumer)
        return sub

    # -- queue lifecycle ----------------------------------------------------

    def create_queue(self, t: Topic, subscription: str) -> None:
        topic = self._topic(t)
        assert topic is not None
        if subscription not in topic.subscriptions:
            topic.subscriptions[subscription] = _Subscription(subscription, topic)

    def delete_queue(self, t: Topic, subscription: str | None) -> None:
        topic = self._topic(t, create=False)
        if topic is None:
            return
        if subscription is None:
            del self._topics[t.identity]
            subs = list(topic.subscriptions.values())
            topic.subscriptions.clear()
        else:
            sub = topic.subscriptions.pop(subscription, None)
            subs = [sub] if sub is not None else []
        for sub in subs:
            for consumer in list(sub.consumers):
                consumer._drop(ClosedError(f"queue {sub.name!r} on topic {str(t)!r} was deleted"))
            sub.ready.clear()

    def queue_exists(self, t: Topic, subscription: str) -> bool:
        topic = self._topic(t, create=False)
        return topic is not None and subscription in topic.subscriptions

    # -- failure simulation -------------------------------------------------

    async def restart(self) -> None:
        """Simulate a broker restart (conformance case 11).

        Every open producer and consumer is dropped: their pending and later
        calls raise ``ConnectionLostError``.  Unacked messages return to their
        subscriptions; q1/q2 data is kept, q0 queued data is lost.  New
        ``create_*`` calls work at once.
        """
        self.restarts += 1
        why = "memory broker restarted; recreate the {}"
        for consumer in list(self._consumers):
            consumer._drop(ConnectionLostError(why.format(f"consumer on {consumer.topic}")))
        for producer in list(self._producers):
            producer._drop(ConnectionLostError(why.format(f"producer for {producer.topic}")))
        for topic in self._topics.values():
            if not topic.durable:
                for sub in topic.subscriptions.values():
                    sub.ready.clear()
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return (
            f"<MemoryHub topics={len(self._topics)} producers={len(self._producers)} "
            f"consumers={len(self._consumers)}>"
        )


_default_hub: MemoryHub | None = None


def default_hub() -> MemoryHub:
    """The process-wide hub that ``MemoryBackend()`` uses when given none."""
    global _default_hub
    if _default_hub is None:
        _default_hub = MemoryHub()
    return _default_hub
