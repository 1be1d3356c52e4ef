"""An in-process backend with the full pub/sub semantics.

For service authors' unit tests and single-process runs.  Everything lives in
a ``MemoryHub``: topics keyed by their identity (``tenant/namespace/queue``),
each with its durable subscriptions.  Backends made without a hub share one
process-wide hub, so two ``get_pubsub(pubsub_backend="memory")`` in one
process talk to each other.

Semantics (the same as the broker backends, see ``trustgraph_pubsub.backend``):

* a ``shared`` subscription splits messages between its consumers in turn,
  as brokers do: each attached consumer has a receive queue of ``prefetch``
  messages (default ``DEFAULT_PREFETCH``), the subscription fills those queues
  round-robin, and a consumer takes from its own queue.  So a backlog queued
  before the consumers began to receive is spread over them, not drained by
  whichever asks first (Pulsar's receiver queue; a consumer that attaches
  first may hold up to ``prefetch`` of a backlog, as on a broker).  Messages
  a consumer holds but has not received go back, uncounted, when it closes;
  two subscriptions each get everything;
* ``exclusive`` allows one consumer; ``failover`` allows many, and only the
  first attached receives until it closes (like Pulsar);
* ``initial_position="earliest"`` on a *new* subscription replays the topic's
  retained log; ``"latest"`` starts after it.  An existing subscription keeps
  its own position, as a durable broker cursor does.  q1/q2 topics retain
  their last ``retain`` messages (default 100,000, like a broker's retention
  limit: a process that publishes forever must not grow forever); q0 topics
  retain nothing;
* nack redelivers at once with ``redelivery_count + 1``, at the back of the
  subscription's queue, so a failing message never blocks the stream behind
  it; ``close`` returns unacked messages to the front of the queue (count + 1)
  and keeps the subscription; ``unsubscribe`` deletes it;
* acknowledging a message twice, or one that is no longer outstanding, is a
  no-op (as on Pulsar); it never acks anything else;
* ``ephemeral=True`` (``create_consumer``): the subscription is made for
  that consumer and removed, with its queued messages, when its last
  consumer closes or is dropped (by ``restart()`` too: the connection died);
  an ephemeral consumer cannot join an existing durable subscription;
* queue lifecycle calls are explicit and idempotent; ``delete_queue(topic,
  None)`` removes the topic, its log and every subscription, closing their
  consumers;
* ``MemoryHub.restart()`` simulates a broker restart: every open producer and
  consumer is dropped (their pending and later calls raise
  ``ConnectionLostError``), unacked messages return to their subscriptions,
  q1/q2 data is kept and q0 queued data is lost.

Nothing survives the process, so ``Capabilities.persistent`` is False.  The
payload limit is 5 MiB, the smallest of the real brokers (Pulsar), so code
that passes here does not fail on a broker for size.

Only asyncio primitives are used.  Operations that complete without waiting
still yield to the event loop every ``_YIELD_EVERY`` calls, so a tight send or
receive loop cannot starve other tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from trustgraph_schema.topic import Topic

from .. import naming
from ..backend import (
    BaseMessage,
    Capabilities,
    ConsumerType,
    InitialPosition,
    Message,
    check_properties,
    encode_payload,
    iterate_messages,
)
from ..errors import (
    ClosedError,
    ConfigurationError,
    ConnectionLostError,
    MessageTooLargeError,
    PubSubError,
    PubSubTimeoutError,
)
from ..redact import shown

__all__ = ["MemoryBackend", "MemoryConsumer", "MemoryHub", "MemoryProducer", "default_hub"]

DEFAULT_MAX_MESSAGE_SIZE = 5 * 1024 * 1024
DEFAULT_RETAIN = 100_000
_YIELD_EVERY = 64
#: a consumer's receive queue unless ``create_consumer(prefetch=...)`` says otherwise.
DEFAULT_PREFETCH = 100
_CONSUMER_TYPES = ("shared", "exclusive", "failover")
_POSITIONS = ("earliest", "latest")


def _live(fut: asyncio.Future[Any]) -> bool:
    """A receive still waiting on a running loop (the hub may outlive a test's loop)."""
    return not fut.done() and not fut.get_loop().is_closed()


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


class _Pacer:
    """Yield to the event loop every ``_YIELD_EVERY`` calls that did not wait."""

    __slots__ = ("_n",)

    def __init__(self) -> None:
        self._n = 0

    async def tick(self) -> None:
        self._n += 1
        if self._n >= _YIELD_EVERY:
            self._n = 0
            await asyncio.sleep(0)


class MemoryProducer:
    """Sends go straight into the hub, so ``flush`` has nothing to wait for."""

    def __init__(self, backend: MemoryBackend, topic: str, parsed: Topic, schema: type[Any] | None) -> None:
        self.topic = topic
        self._parsed = parsed
        self._schema = schema
        self._backend = backend
        self._hub = backend.hub
        self._error: Exception | None = None
        self._pacer = _Pacer()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        self._check()
        data = encode_payload(self._schema, message, self.topic)
        props = check_properties(properties, self.topic)
        limit = self._hub.max_message_size
        if len(data) > limit:
            raise MessageTooLargeError(
                f"message of {len(data)} bytes on {self.topic} exceeds the memory backend's "
                f"limit of {limit} bytes; send a reference to the data instead, or split it"
            )
        # Kept (retained log, queues) as an exact-size copy: the codec's encoder
        # (orjson) hands back bytes whose allocation is kilobytes larger than
        # their length, ten times a 1 KiB message, and a hub that retains
        # 100,000 messages per topic would hold gigabytes of slack.
        self._hub._publish(self._parsed, _Entry(bytes(memoryview(data)), props, key))
        await self._pacer.tick()

    async def flush(self) -> None:
        self._check()

    async def close(self) -> None:
        if self._error is None:
            self._drop(ClosedError(f"producer for {self.topic} is closed"))

    def _drop(self, error: Exception) -> None:
        self._error = error
        self._hub._producers.discard(self)
        self._backend._producers.discard(self)

    def __repr__(self) -> str:
        return f"<MemoryProducer topic={self.topic!r}>"


class MemoryConsumer:
    """One consumer attached to a subscription of the hub."""

    def __init__(
        self,
        backend: MemoryBackend,
        topic: str,
        parsed: Topic,
        subscription: str,
        schema: type[Any] | None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        self.topic = topic
        self.subscription = subscription
        self._parsed = parsed
        self._schema = schema
        self._backend = backend
        self._hub = backend.hub
        self._sub: _Subscription | None = None
        self._unacked: dict[int, _Delivery] = {}
        self._prefetch = prefetch
        #: delivered to this consumer, not yet received (Pulsar's receiver queue)
        self._inbox: deque[_Delivery] = deque()
        self._waiters: deque[asyncio.Future[_Delivery]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # made outside a loop: no loop to outlive
            self._loop = asyncio.get_running_loop()
        self._error: Exception | None = None
        self._pacer = _Pacer()

    # -- called by the subscription ----------------------------------------

    def track(self, delivery: _Delivery) -> None:
        self._unacked[id(delivery)] = delivery

    def loop_closed(self) -> bool:
        return self._loop is not None and self._loop.is_closed()

    def has_room(self) -> bool:
        return len(self._inbox) < self._prefetch or bool(self._waiters)

    def deliver(self, delivery: _Delivery, *, front: bool = False) -> None:
        """Take a message: to a waiting receive, else into the receive queue."""
        while self._waiters:
            fut = self._waiters.popleft()
            if _live(fut):
                self.track(delivery)
                fut.set_result(delivery)
                return
        if front:
            self._inbox.appendleft(delivery)
        else:
            self._inbox.append(delivery)

    def _detach(self) -> _Subscription | None:
        """Leave the subscription, returning unacked messages to it."""
        sub, self._sub = self._sub, None
        self._hub._consumers.discard(self)
        self._backend._consumers.discard(self)
        if sub is None:
            return None
        if self in sub.consumers:
            sub.consumers.remove(self)
        pending = list(self._unacked.values())
        self._unacked.clear()
        held, self._inbox = list(self._inbox), deque()
        waiting, self._waiters = list(self._waiters), deque()
        if sub.consumers:
            sub.turn %= len(sub.consumers)
        for fut in waiting:
            if _live(fut):
                fut.set_exception(self._error or ClosedError(f"consumer on {self.topic} closed"))
        if sub.ephemeral and not sub.consumers:
            # Its last consumer is gone: so is the subscription, with what it held.
            if sub.topic.subscriptions.get(sub.name) is sub:
                del sub.topic.subscriptions[sub.name]
            sub.ready.clear()
            return sub
        # What it held unreceived goes back as it was; what it received and
        # did not ack comes again, counted.  Both go to the front, in order,
        # and to the next consumers in turn (a failover standby among them).
        for d in pending:
            d.redeliveries += 1
        sub.ready.extendleft(reversed(pending + held))
        sub.dispatch()
        return sub

    def _drop(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._detach()

    # -- the BackendConsumer API -------------------------------------------

    def _check(self) -> _Subscription:
        if self._error is not None:
            raise self._error
        assert self._sub is not None
        return self._sub

    def _message(self, delivery: _Delivery) -> BaseMessage:
        e = delivery.entry
        return BaseMessage(
            e.data, dict(e.properties), self.topic, self._schema, delivery.redeliveries, delivery
        )

    async def receive(self, timeout: float | None = None) -> BaseMessage:  # noqa: ASYNC109 (contract)
        sub = self._check()
        if self._inbox:
            # Yield (now and then) before taking the message, never after: a
            # receive cancelled while it yields must not hold a message.
            await self._pacer.tick()
            sub = self._check()
            if self._inbox:
                delivery = self._inbox.popleft()
                self.track(delivery)
                sub.dispatch()  # room in the receive queue: the next in turn
                return self._message(delivery)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Delivery] = loop.create_future()
        self._waiters.append(fut)
        sub.dispatch()
        timer = None
        if timeout is not None and not fut.done():
            timer = loop.call_later(timeout, self._expire, fut, timeout)
        try:
            delivery = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Handed to us just as we were cancelled: keep it, unreceived,
                # at the front of this consumer's queue.
                d = fut.result()
                if self._unacked.pop(id(d), None) is not None and self._sub is not None:
                    self.deliver(d, front=True)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            # A waiter that was handed a delivery is already gone; test before
            # removing (a failed deque.remove formats the repr of what it sought).
            if fut in self._waiters:
                self._waiters.remove(fut)
        if self._error is not None:
            # Dropped after the hand-over: _detach already returned it.
            raise self._error
        return self._message(delivery)

    def _expire(self, fut: asyncio.Future[_Delivery], timeout: float) -> None:
        if not fut.done():
            fut.set_exception(
                PubSubTimeoutError(
                    f"no message on {self.topic} (subscription {self.subscription!r}) "
                    f"within {timeout}s"
                )
            )
            if fut in self._waiters:
                self._waiters.remove(fut)

    def _delivery(self, message: Any) -> _Delivery:
        handle = getattr(message, "handle", None)
        if not isinstance(handle, _Delivery):
            raise TypeError(
                f"consumer on {self.topic} can only acknowledge messages it received, "
                f"got {type(message).__name__}"
            )
        return handle

    async def acknowledge(self, message: Any) -> None:
        delivery = self._delivery(message)
        self._check()
        self._unacked.pop(id(delivery), None)

    async def negative_acknowledge(self, message: Any) -> None:
        delivery = self._delivery(message)
        sub = self._check()
        if self._unacked.pop(id(delivery), None) is not None:
            sub.nacked(delivery)

    async def unsubscribe(self) -> None:
        sub = self._check()
        self._drop(ClosedError(f"consumer on {self.topic} unsubscribed"))
        topic = sub.topic
        if topic.subscriptions.get(sub.name) is sub:
            for other in list(sub.consumers):
                other._drop(
                    ClosedError(f"subscription {sub.name!r} on {self.topic} was unsubscribed")
                )
            del topic.subscriptions[sub.name]
            sub.ready.clear()

    async def close(self) -> None:
        if self._error is None:
            self._drop(ClosedError(f"consumer on {self.topic} is closed"))

    def __aiter__(self) -> AsyncIterator[Message]:
        return iterate_messages(self)

    def __repr__(self) -> str:
        return f"<MemoryConsumer topic={self.topic!r} subscription={self.subscription!r}>"


class MemoryBackend:
    """The in-process backend; ``hub=None`` uses the process-wide hub."""

    name = "memory"

    def __init__(self, hub: MemoryHub | None = None) -> None:
        self.hub = hub if hub is not None else default_hub()
        self.capabilities = Capabilities(
            persistent=False,
            replay_from_earliest=True,
            native_nack=True,
            ordering=True,
            consumer_groups=True,
            max_message_size=self.hub.max_message_size,
            queue_lifecycle=True,
            redelivery_count=True,
            consumer_types=frozenset(_CONSUMER_TYPES),
            exactly_once=False,
        )
        self._producers: set[MemoryProducer] = set()
        self._consumers: set[MemoryConsumer] = set()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("memory backend is closed; create a new one with get_pubsub()")

    async def create_producer(
        self, topic: str, schema: type[Any] | None, **opts: Any
    ) -> MemoryProducer:
        """Open a producer; options (``latency_bound`` ...) are accepted and ignored."""
        self._check()
        parsed = naming.parse(topic)
        producer = MemoryProducer(self, topic, parsed, schema)
        self._producers.add(producer)
        self.hub._producers.add(producer)
        return producer

    async def create_consumer(
        self,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        initial_position: InitialPosition = "latest",
        consumer_type: ConsumerType = "shared",
        **opts: Any,
    ) -> MemoryConsumer:
        """Subscribe.  ``prefetch`` is the consumer's receive queue (default
        ``DEFAULT_PREFETCH``), filled in turn with the subscription's other
        consumers.  ``ephemeral=True``: the subscription is removed when its last consumer
        closes (see the module docstring)."""
        self._check()
        parsed = naming.parse(topic)
        naming.check_subscription(subscription, topic)
        if initial_position not in _POSITIONS:
            raise ConfigurationError(
                f"initial_position {shown(initial_position)} for {topic}: expected 'earliest' or 'latest'"
            )
        if consumer_type not in _CONSUMER_TYPES:
            raise ConfigurationError(
                f"consumer_type {shown(consumer_type)} for {topic}: expected one of "
                f"{', '.join(_CONSUMER_TYPES)}"
            )
        prefetch = opts.get("prefetch") or DEFAULT_PREFETCH
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigurationError(f"prefetch for {topic} must be an int >= 1, got {shown(prefetch)}")
        consumer = MemoryConsumer(self, topic, parsed, subscription, schema, prefetch)
        consumer._sub = self.hub._subscribe(
            consumer, parsed, initial_position, consumer_type, bool(opts.get("ephemeral"))
        )
        consumer._sub.dispatch()
        self._consumers.add(consumer)
        return consumer

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Create the subscription (idempotent, like a broker's declare)."""
        self._check()
        parsed = naming.parse(topic)
        naming.check_subscription(subscription, topic)
        self.hub.create_queue(parsed, subscription)

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """Delete a subscription, or the whole topic; missing ones are ignored."""
        self._check()
        parsed = naming.parse(topic)
        if subscription is not None:
            naming.check_subscription(subscription, topic)
        self.hub.delete_queue(parsed, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        self._check()
        parsed = naming.parse(topic)
        naming.check_subscription(subscription, topic)
        return self.hub.queue_exists(parsed, subscription)

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        await self.create_queue(topic, subscription)

    async def close(self) -> None:
        """Close every producer and consumer this backend opened.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for producer in list(self._producers):
            await producer.close()
        for consumer in list(self._consumers):
            await consumer.close()

    def __repr__(self) -> str:
        return f"<MemoryBackend hub={self.hub!r}>"
