"""The backend contract: what every broker adapter provides.

A backend turns generic topic names (``q1/tg/flow/queue``) into its broker's
native objects and gives async producers and consumers over them.  Services
and the resilient building blocks (``Consumer``, ``Publisher`` ...) are
written against these Protocols only; they read ``Capabilities`` instead of
checking a backend's name.

Conventions every backend keeps (see DESIGN.md, "The backend contract"):

* nothing blocks the event loop;
* ``schema=None`` means raw bytes: ``send`` takes ``bytes`` and
  ``Message.value()`` returns them (used for dead-letter forwarding);
* ``shared`` subscriptions split the load, distinct subscriptions fan out;
* nack (or a handler exception upstream) means redelivery; ack of one
  message never acks another;
* ``close()`` never deletes a durable subscription; ``unsubscribe()`` does;
  an ``ephemeral=True`` subscription goes with its consumer (``create_consumer``);
* properties are ``str -> str``;
* constructors never do I/O (``get_pubsub`` is synchronous): the first
  ``create_*`` call connects, and a refused connection or bad credentials
  raise ``BrokerConnectionError`` / ``AuthenticationError`` within about
  ten seconds instead of retrying forever (resilient clients retry);
* an established connection that drops surfaces as ``ConnectionLostError``
  from the affected producer/consumer calls; ``Consumer`` and ``Producer``
  recreate them with backoff;
* a consumer exists on the broker when ``create_consumer`` returns: a
  message published after that is delivered to it, even with
  ``initial_position="latest"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal, Protocol, runtime_checkable

from trustgraph_schema import codec
from trustgraph_schema.errors import DecodeError, SchemaError

from .errors import ClosedError, MessageDecodeError

InitialPosition = Literal["earliest", "latest"]
ConsumerType = Literal["shared", "exclusive", "failover"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend honestly gives against a correct broker.

    A broker build's own defects (say, tansu keeping data in memory only) are
    not described here: they belong to the test fixture's quirks.
    """

    #: q1 messages survive a broker restart.
    persistent: bool
    #: ``initial_position="earliest"`` replays messages sent before the subscription existed.
    replay_from_earliest: bool
    #: the broker itself redelivers a nacked message (False: the backend emulates it).
    native_nack: bool
    #: one producer -> one consumer keeps publish order (per key where keys partition).
    ordering: bool
    #: several consumers on one subscription share its messages.
    consumer_groups: bool
    #: largest payload in bytes the backend accepts by default.
    max_message_size: int
    #: create/delete/exists act on the broker (False: queues appear implicitly on use,
    #: lifecycle calls are documented no-ops and ``queue_exists`` cannot know).
    queue_lifecycle: bool
    #: ``Message.redelivery_count`` is reliable across consumers (broker-tracked).
    redelivery_count: bool = True
    #: consumer types accepted by ``create_consumer``.
    consumer_types: frozenset[str] = field(default_factory=lambda: frozenset({"shared"}))
    #: q2 gives exactly-once delivery where the broker can (idempotent/confirmed publish).
    exactly_once: bool = False


@runtime_checkable
class Message(Protocol):
    """One received message."""

    def value(self) -> Any:
        """The decoded dataclass (or bytes when the consumer's schema is None).

        Raises ``MessageDecodeError`` when the bytes do not decode.
        """
        ...

    def properties(self) -> dict[str, str]: ...

    def data(self) -> bytes:
        """The raw payload as it came off the wire."""
        ...

    @property
    def topic(self) -> str:
        """The generic topic name it was consumed from."""
        ...

    @property
    def redelivery_count(self) -> int:
        """0 on first delivery; how many times it was delivered before."""
        ...


@runtime_checkable
class BackendProducer(Protocol):
    topic: str

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        """Encode and send one message.

        Returns once the message is handed to the client at q0/q1 (many may
        be in flight; ``flush`` waits for them) and once the broker confirmed
        it where the topic's qos asks for confirms (q2).  ``key`` orders and
        partitions where the broker has keys.
        """
        ...

    async def flush(self) -> None:
        """Wait until every message sent so far is handed to the broker."""
        ...

    async def close(self) -> None:
        """Flush, then release the producer.  Idempotent."""
        ...


class NowaitProducer(BackendProducer, Protocol):
    """Optional: a backend producer that takes a message without a coroutine.

    ``Producer.send`` encodes the message, then tries this plain call before
    awaiting the backend's ``send``: on Pulsar the two coroutines of the
    awaited path (``Producer._on`` and the backend's ``send``) were a fifth of
    the SDK's CPU per message.  The call never waits, blocks or yields to
    the loop.
    """

    def send_nowait(
        self, data: bytes, properties: Mapping[str, str] | None, key: str | None
    ) -> bool:
        """Send encoded ``data`` as ``send`` would, if that needs no wait.

        False, having done nothing, whenever ``send`` must be awaited
        instead: the producer is closed or failed (``send`` raises why), its
        window is full, the message needs the broker's word, or a yield to
        the event loop is due (at least one call in a few dozen, so that a
        loop of sends lets other tasks run).  Bad input raises what ``send``
        raises for it, or gives False so that ``send`` does.
        """
        ...


@runtime_checkable
class BackendConsumer(Protocol):
    topic: str
    subscription: str

    async def receive(self, timeout: float | None = None) -> Message:  # noqa: ASYNC109 (contract)
        """The next message; ``PubSubTimeoutError`` after ``timeout`` seconds."""
        ...

    async def acknowledge(self, message: Message) -> None: ...

    async def negative_acknowledge(self, message: Message) -> None:
        """Ask for redelivery of this message (and only this one where the broker can)."""
        ...

    async def unsubscribe(self) -> None:
        """Delete the durable subscription and its backlog, then close."""
        ...

    async def close(self) -> None:
        """Release the consumer; unacked messages return to the subscription.  Idempotent."""
        ...

    def __aiter__(self) -> AsyncIterator[Message]: ...


class NowaitConsumer(BackendConsumer, Protocol):
    """Optional: a backend consumer that hands over what it already holds without a coroutine.

    A backend whose client buffers messages (Pulsar's receiver queue, a Kafka
    fetch) gives ``Consumer`` a plain call for the common case, so a message
    costs no coroutine to receive and none to acknowledge: two of them were a
    fifth of the per-message cost on Pulsar.  Neither call waits or does I/O
    that could block the loop, and neither yields to it: the caller does.
    """

    def receive_nowait(self) -> Message | None:
        """A message already held, or None (then ``await receive()``, which
        also raises whatever stops this consumer)."""
        ...

    def acknowledge_nowait(self, message: Message) -> None:
        """``acknowledge``, as a plain call: same effect, same errors."""
        ...


@runtime_checkable
class PubSubBackend(Protocol):
    name: str
    capabilities: Capabilities

    async def create_producer(
        self, topic: str, schema: type[Any] | None, **opts: Any
    ) -> BackendProducer:
        """Open a producer.  ``opts`` backends understand: ``latency_bound``
        (bool: requests, replies, pushes; a batching client must not make
        these wait out a batching delay).  Unknown options are ignored."""
        ...

    async def create_consumer(
        self,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        initial_position: InitialPosition = "latest",
        consumer_type: ConsumerType = "shared",
        **opts: Any,
    ) -> BackendConsumer:
        """Subscribe.  ``opts`` backends understand:

        * ``prefetch`` (int, messages the broker may push ahead of acks,
          normally the handler concurrency);
        * ``ephemeral`` (bool, default False): the subscription belongs to
          this consumer.  The broker deletes it, with whatever is queued on
          it, when the consumer closes or its connection dies, with no call
          from the client (a process killed with SIGKILL leaves nothing
          behind).  Messages published while no consumer is attached may be
          lost: that is the point.  For private, generated subscriptions
          (``RequestResponse``'s reply subscription); ``unsubscribe`` works
          as for a durable one.  Each backend's module docstring names the
          native mechanism, and says where the broker cannot give it.
        """
        ...

    async def create_queue(self, topic: str, subscription: str) -> None: ...

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """Delete the subscription's queue, or with ``subscription=None`` the topic
        and every subscription on it."""
        ...

    async def queue_exists(self, topic: str, subscription: str) -> bool: ...

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        """Create the queue if it is missing; idempotent."""
        ...

    async def close(self) -> None: ...


#: ``BaseMessage._value`` before the first ``value()``: None is a value a schema may decode to
_UNDECODED: Any = object()


def decode_message(schema: type[Any] | None, data: bytes, topic: str) -> Any:
    """What a message's ``value()`` returns when it was not decoded on receipt.

    ``data`` decoded as ``schema``; the bytes themselves when ``schema`` is
    None; a ``MessageDecodeError`` naming the topic, the schema and the field
    when they do not decode.
    """
    if schema is None:
        return data
    try:
        return codec.decode(schema, data)
    except DecodeError as exc:
        raise MessageDecodeError(
            f"message on {topic} does not decode as {schema.__name__}: {exc}", exc.path
        ) from exc


def _same(data: Any) -> Any:
    return data


def _later(data: Any) -> Any:
    return _UNDECODED


def value_decoder(schema: type[Any] | None) -> Callable[[Any], Any]:
    """The function a consumer decodes every message with as it takes it, made once.

    A consumer asks for every message's value before its handler runs, so
    the Kafka and Pulsar consumers decode a message as they hand it out,
    with the schema's own decoder looked up once, and ``value()`` returns
    what they stored: 0.18-0.36 us a message less than ``value()``'s lazy
    path, with its lookups and calls (measured against a stubbed aiokafka).
    A caller stores ``_UNDECODED`` when the decoder raises, so that
    ``value()`` decodes again and raises the ``MessageDecodeError`` that
    names the field.  ``schema`` None: the bytes as they are; not a schema:
    always ``_UNDECODED`` (``value()`` raises the ``SchemaError``).
    """
    if schema is None:
        return _same
    try:
        return codec.decoder(schema)
    except SchemaError:
        return _later


class BaseMessage:
    """A received message; backends construct it, decoding is lazy and cached
    (or done as it is received: see ``value_decoder``).

    ``handle`` is the backend's own delivery token (delivery tag, offset,
    Pulsar message ...), opaque to everyone else.
    """

    __slots__ = ("_data", "_props", "_topic", "_schema", "_redeliveries", "handle", "_value")

    def __init__(
        self,
        data: bytes,
        properties: dict[str, str] | None,
        topic: str,
        schema: type[Any] | None,
        redelivery_count: int = 0,
        handle: Any = None,
    ) -> None:
        self._data = data
        #: None: a subclass reads them from the client's message when first asked
        self._props = properties
        self._topic = topic
        self._schema = schema
        self._redeliveries = redelivery_count
        self.handle = handle
        self._value: Any = _UNDECODED

    def value(self) -> Any:
        value = self._value
        if value is _UNDECODED:
            value = self._value = decode_message(self._schema, self._data, self._topic)
        return value

    def properties(self) -> dict[str, str]:
        return self._props if self._props is not None else {}

    def data(self) -> bytes:
        return self._data

    # Read on every message by the consumer loop: a property whose getter is
    # C code, not a Python function (a frame per message costs).
    topic = property(attrgetter("_topic"), doc="The generic topic name it was consumed from.")
    redelivery_count = property(
        attrgetter("_redeliveries"), doc="0 on first delivery; how many times it was delivered before."
    )

    def __repr__(self) -> str:
        return (
            f"<Message topic={self._topic!r} bytes={len(self._data)} "
            f"redeliveries={self._redeliveries}>"
        )


async def iterate_messages(consumer: BackendConsumer) -> AsyncIterator[Message]:
    """What every backend consumer's ``__aiter__`` returns.

    Messages until the consumer is closed (``ClosedError`` ends the loop); a
    lost connection raises, so the caller can reconnect.
    """
    while True:
        try:
            yield await consumer.receive()
        except ClosedError:
            return


def encode_payload(schema: type[Any] | None, message: Any, topic: str) -> bytes:
    """The one place producers turn a message into bytes."""
    if schema is None:
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"producer for {topic} has no schema and sends bytes, got {type(message).__name__}"
            )
        return bytes(message)
    if not isinstance(message, schema):
        raise TypeError(
            f"producer for {topic} sends {schema.__name__}, got {type(message).__name__}"
        )
    return codec.encode(message)


def check_properties(properties: Mapping[str, str] | None, topic: str) -> dict[str, str]:
    """Validate that properties are ``str -> str``; return a plain dict copy."""
    if not properties:
        return {}
    out: dict[str, str] = {}
    for k, v in properties.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(
                f"properties on {topic} must be str -> str, got {k!r}: {type(v).__name__}"
            )
        out[k] = v
    return out
