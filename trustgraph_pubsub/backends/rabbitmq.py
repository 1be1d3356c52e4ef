"""RabbitMQ backend: pika driven by its asyncio connection adapter.

One ``AsyncioConnection`` per backend, opened by the first ``create_*`` call
and shared by every producer and consumer on its own channel; pika's callbacks
become futures on the running loop, so nothing blocks it and no thread is
used.  Credentials go to pika as ``PlainCredentials`` (never through an
``amqp://`` URL), so any character in a user name or password works without
escaping, and neither appears in a log line, a repr or an error message.

Topology (names from ``trustgraph_pubsub.naming`` only):

* a topic is a durable **fanout exchange** ``tenant.namespace.queue``; a
  subscription is a queue ``tenant.namespace.queue:subscription`` bound to it,
  so consumers of one subscription compete and two subscriptions fan out.  The
  exchange is durable whatever the qos: ``q0/t/n/x`` and ``q1/t/n/x`` name the
  same exchange, and a durable exchange costs nothing;
* **q0**: a non-durable classic queue and transient messages: best effort, gone
  after a broker restart.  Producers publish without confirms; ``flush`` is a
  channel round trip, which the broker answers only after it has taken every
  publish sent before it on that channel;
* **q1**: a durable **quorum** queue and persistent messages, manual acks
  (option ``queue_type="classic"``: a durable classic queue instead; about a
  third of the round-trip latency and twice the consume rate on one node,
  measured, but not replicated in a cluster).
  Producers publish in confirm mode, pipelined: ``send`` returns once the
  message is written to the socket, at most ``MAX_IN_FLIGHT`` unconfirmed
  messages are kept in flight (then ``send`` waits), and ``flush``/``close``
  wait for the broker's confirms of everything sent.  Unconfirmed messages are
  kept by the producer: if its channel or connection drops, they are published
  again on the next connection (by the next ``send``/``flush``/``close``, or
  as soon as anything reconnects the backend), so a message handed to ``send``
  is not lost by a reconnect; it may arrive twice (at least once);
* **q2**: q1, and ``send`` returns only once the broker confirmed the message.
  RabbitMQ cannot deduplicate, so ``Capabilities.exactly_once`` is False.

Redelivery: every subscription queue dead-letters to itself (dead-letter
exchange ``""``, routing key = its own name; quorum queues use the
``at-least-once`` dead-letter strategy).  ``negative_acknowledge`` is a
``basic.nack`` without requeue: the broker moves the message to the back of
the same queue and counts it in the ``x-death`` header, which becomes
``Message.redelivery_count``.  The resilient ``Consumer`` dead-letters a
message once that count reaches ``max_redeliveries``, so a poison message is
handled at most ``max_redeliveries + 1`` times.  The count is kept by the
broker in the message, so it holds across consumers and for q0 classic queues
too.  RabbitMQ 3.10's quorum ``x-delivery-count`` is not counted one for one:
it also counts messages merely returned by a consumer that closed with them
prefetched, which would dead-letter healthy messages after a few restarts.
A message that crashes the process before it is settled is still bounded, on
quorum queues: every ``returns_per_redelivery`` (default 10) unsettled returns
in ``x-delivery-count`` add one to the redelivery count, and ``Consumer``
dead-letters a message whose count already exceeds ``max_redeliveries``
before running its handler.  A crash loop thus ends in the dead-letter topic
after about ``(max_redeliveries + 1) * returns_per_redelivery`` deliveries,
while a healthy message prefetched through a few restarts is not touched.
(``x-delivery-limit`` is not used for this: RabbitMQ 3.10 drops, as a
dead-letter cycle, a message that a queue's delivery limit dead-letters to
itself: measured.)  Classic queues have no delivery count, so there a crash
loop is not bounded.

Ephemeral subscriptions (``create_consumer(..., ephemeral=True)``): the
queue (same name, from ``naming.rabbitmq_queue``) is declared **exclusive**,
**auto-delete** and non-durable, a classic queue whatever the qos.  The
broker deletes an exclusive queue when the connection that declared it
closes or dies (a SIGKILLed process's TCP connection, at once), and an
auto-delete queue when its last consumer cancels (the consumer's channel
closing); either way its messages go with it.  It is not entered in the
topic's registry (nothing would remove the entry), so ``delete_queue(topic)``
does not name it; deleting the exchange unbinds it and it goes with its
consumer.  Only the declaring connection may consume it, so a second
consumer of the same ephemeral subscription must share the backend, and
``queue_exists`` asked over another connection reports it (the broker's
RESOURCE_LOCKED answer means it exists).

Queue lifecycle: AMQP cannot list the queues bound to an exchange and the
management plugin may be absent, so each topic keeps a small durable registry
queue (``naming.rabbitmq_registry_queue``) holding one message per subscription
queue created through this backend.  ``delete_queue(topic)`` reads it, deletes
every queue it names, the registry and the exchange.  Queues created by other
tools on the exchange are not found.

``initial_position``: a new queue starts empty, so "earliest" cannot replay
what was published before the subscription existed
(``Capabilities.replay_from_earliest`` is False; stream queues could add it
later); an existing subscription always delivers its backlog.  Consumer types:
``shared`` only.  RabbitMQ 3.10 quorum queues accept ``basic.consume`` with
``exclusive`` and silently ignore it (measured), so an exclusive consumer
could not be refused a second one on q1/q2; failover would need the
``x-single-active-consumer`` queue argument, fixed when the queue is declared
and so in conflict with shared use of the same subscription.  Both raise
``UnsupportedError``.

Options understood: ``prefetch`` on consumers (``basic.qos``; default
``DEFAULT_PREFETCH``); ``latency_bound`` on producers writes each message to
the socket at once (pika does not batch, but it writes only on the next loop
iteration, and throughput-bound producers are better served by that).  A lost connection fails pending calls with
``ConnectionLostError`` at once; ``create_*`` reconnects.

Per-message costs (measured against raw pika in ``benchmarks/rabbitmq_bench``):
no log line and no broker round trip per message; an ack is one frame, sent
with whatever else is queued (``_coalesce_writes`` joins pika's queued frames
into one ``send()``, where pika would make one system call per frame); a
delivery becomes a ``BaseMessage`` with the broker's header dict as its
properties unless that needs cleaning; receive and send hand over without an
extra task, and yield to the loop every ``_YIELD_EVERY`` calls that did not
wait, so a busy consumer cannot starve the loop.

Private internals of pika this module relies on (checked without a broker by
``tests/unit/test_client_internals.py``; ``pyproject.toml`` keeps pika to the
minor versions that passed):

* ``AsyncioConnection._transport``: the connected stream transport, which
  ``_coalesce_writes`` works on.
* The transport's ``_tx_buffers`` (the deque of queued frames), ``_produce``
  (replaced on the instance by one that joins the frames first) and
  ``_on_socket_writable`` (pika's writability handler, which calls
  ``_produce``; latency-bound sends call it at once), of
  ``pika.adapters.utils.io_services_utils._AsyncPlaintextTransport``.
  Without them pika writes as it would on its own.
* The ``pika.channel`` logger's WARNING for a broker's Channel.Close, whose
  arguments ``(reply_code, reply_text, channel)`` ``_ExpectedNotFound`` reads
  to drop the 404 that answers a passive declare.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pika
import pika.exceptions
from pika import spec
from pika.adapters.asyncio_connection import AsyncioConnection

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
    AuthenticationError,
    BrokerConnectionError,
    ClosedError,
    ConfigurationError,
    ConnectionLostError,
    MessageTooLargeError,
    PubSubError,
    PubSubTimeoutError,
    QueueNotFoundError,
    UnsupportedError,
)
from ..redact import shown

__all__ = ["RabbitMQBackend", "RabbitMQConsumer", "RabbitMQProducer"]

log = logging.getLogger(__name__)

#: Seconds to open a connection before a refused/unreachable broker is reported.
CONNECT_TIMEOUT = 10.0
#: Seconds any broker round trip (declare, delete, channel open ...) may take.
RPC_TIMEOUT = 30.0
#: How long ``flush`` or a q2 ``send`` waits for publisher confirms.
CONFIRM_TIMEOUT = 60.0
#: RabbitMQ 3.x's default ``max_message_size``: 128 MiB.
MAX_MESSAGE_SIZE = 128 * 1024 * 1024
#: ``basic.qos`` prefetch when the caller does not pass ``prefetch``.
DEFAULT_PREFETCH = 100
#: Unconfirmed q1 messages per producer before ``send`` waits for confirms.
MAX_IN_FLIGHT = 4096
#: A send/receive that completes without waiting yields to the loop this often.
_YIELD_EVERY = 64

_TRANSIENT = 1
_PERSISTENT = 2
#: Headers the broker adds when dead-lettering; not user properties.
_BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
_CONSUMER_TYPES = ("shared",)
_POSITIONS = ("earliest", "latest")
_QUEUE_TYPES = ("quorum", "classic")

_CAPABILITIES = Capabilities(
    persistent=True,
    replay_from_earliest=False,
    native_nack=True,
    ordering=True,
    consumer_groups=True,
    max_message_size=MAX_MESSAGE_SIZE,
    queue_lifecycle=True,
    redelivery_count=True,
    consumer_types=frozenset(_CONSUMER_TYPES),
    exactly_once=False,
)


# -- helpers ------------------------------------------------------------------


def _queue_arguments(queue: str, durable: bool, queue_type: str) -> dict[str, Any]:
    """Declaration arguments of a subscription queue (see the module docstring)."""
    if durable and queue_type == "quorum":
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
    }


def _split_headers(
    headers: dict[str, Any], queue: str, returns_per_redelivery: int
) -> tuple[dict[str, str], int]:
    """User properties and the redelivery count from a delivery's headers.

    The count is how often this queue dead-lettered the message to itself
    (``x-death`` entries with reason ``rejected``: nacks), plus one for every
    ``returns_per_redelivery`` unsettled returns a quorum queue counted in
    ``x-delivery-count`` (consumers that crashed, or closed, holding it).  Broker headers are
    dropped; a non-string value from a foreign publisher is shown as text, so
    properties stay ``str -> str``.
    """
    count = 0
    deaths = headers.get("x-death")
    if isinstance(deaths, list):
        for entry in deaths:
            if (
                isinstance(entry, dict)
                and entry.get("queue") == queue
                and entry.get("reason") == "rejected"
            ):
                with contextlib.suppress(TypeError, ValueError):
                    count += int(entry.get("count", 0))
    returns = headers.get("x-delivery-count")
    if isinstance(returns, int) and returns > 0:
        count += returns // returns_per_redelivery
    props: dict[str, str] = {}
    for k, v in headers.items():
        if k in _BROKER_HEADERS:
            continue
        if type(v) is str:
            props[k] = v
        elif isinstance(v, bytes):
            props[k] = v.decode("utf-8", "replace")
        else:
            props[k] = str(v)
    return props, count


class _ExpectedNotFound(logging.Filter):
    """Drop pika's WARNING for a 404 (or 405, another connection's exclusive
    queue) on a channel that only looked a name up.

    A passive declare is the only way AMQP answers "does this queue exist?",
    and the broker answers "no" by closing the channel; that is an answer, not
    a warning.  Only channels registered here are filtered, so any other
    channel closed by the broker is still logged by pika.
    """

    def __init__(self) -> None:
        super().__init__()
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 3 and args[0] in (404, 405):
            try:
                return args[2] not in self.channels
            except TypeError:
                return True
        return True


_LOOKUPS = _ExpectedNotFound()
logging.getLogger("pika.channel").addFilter(_LOOKUPS)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        # Nobody may be awaiting it (a waiter that timed out): keep asyncio quiet.
        fut.exception()


def _is_connection_error(exc: BaseException) -> bool:
    """A dropped connection or a channel that is gone with it."""
    return isinstance(
        exc,
        (
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.ChannelClosed,
            pika.exceptions.ChannelWrongStateError,
            OSError,
        ),
    )


class _Channel:
    """A pika channel whose RPCs are awaitables.

    When the channel closes (broker error, our close, or the connection
    dropping), every pending RPC fails with the close reason and ``on_close``
    is told, once.
    """

    __slots__ = ("ch", "reason", "on_close", "_pending", "_closed", "_loop")

    def __init__(self, ch: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.ch = ch
        self._loop = loop
        self.reason: BaseException | None = None
        self.on_close: Callable[[BaseException], None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._closed: asyncio.Future[None] = loop.create_future()
        ch.add_on_close_callback(self._on_close)

    @property
    def is_open(self) -> bool:
        return self.reason is None and bool(self.ch.is_open)

    def _on_close(self, _ch: Any, reason: BaseException) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        pending, self._pending = self._pending, set()
        for fut in pending:
            _set_exception(fut, reason)
        _set_result(self._closed, None)
        hook, self.on_close = self.on_close, None
        if hook is not None:
            hook(reason)

    def future(self) -> asyncio.Future[Any]:
        """A future that fails with the close reason if the channel closes first."""
        return self.track(self._loop.create_future())

    def track(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Fail ``fut`` with the close reason if the channel closes before it is done."""
        if self.reason is not None:
            _set_exception(fut, self.reason)
            return fut
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one synchronous AMQP method; its reply frame, or the close reason raised."""
        fut = self.future()
        if not fut.done():
            try:
                method(*args, callback=lambda frame: _set_result(fut, frame), **kwargs)
            except Exception as exc:
                _set_exception(fut, exc)
        async with asyncio.timeout(RPC_TIMEOUT):
            return await fut

    async def close(self) -> None:
        """Close and wait for close-ok (or the connection to go); never raises."""
        if self.reason is None and (self.ch.is_open or self.ch.is_opening):
            with contextlib.suppress(Exception):
                self.ch.close()
        if self.reason is None and not self.ch.connection.is_open:
            return  # no close-ok will come; the connection's end closes it
        with contextlib.suppress(Exception):
            async with asyncio.timeout(RPC_TIMEOUT):
                await asyncio.shield(self._closed)


# -- producer -----------------------------------------------------------------


class RabbitMQProducer:
    """Publishes to one topic's exchange on its own channel (see the module docstring)."""

    def __init__(
        self,
        backend: RabbitMQBackend,
        parsed: Topic,
        schema: type[Any] | None,
        latency_bound: bool = False,
    ) -> None:
        self._backend = backend
        self.topic = str(parsed)
        self._schema = schema
        self._exchange = naming.check_rabbitmq_name(naming.rabbitmq_exchange(parsed), parsed)
        self._confirm = parsed.qos != "q0"
        self._await_confirm = parsed.qos == "q2"
        # Requests, replies and pushes (and q2 sends, which wait for a round trip
        # anyway) go to the socket at once; streams leave pika to coalesce writes.
        self._eager = latency_bound or self._await_confirm
        self._mode = _TRANSIENT if parsed.qos == "q0" else _PERSISTENT
        self._plain_props = pika.BasicProperties(delivery_mode=self._mode)
        self._chan: _Channel | None = None
        self._reopen_lock = asyncio.Lock()
        # Confirm tracking on the current channel: publish sequence numbers start at 1.
        self._seq = 0
        self._low = 1
        self._unconfirmed: dict[int, tuple[bytes, Any, str]] = {}
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._drain: list[tuple[int, asyncio.Future[None]]] = []
        self._rejected = 0
        self._closed = False
        self._calls = 0

    # -- channel management ---------------------------------------------------

    async def _open(self) -> _Channel:
        """A channel in confirm mode (q1/q2) with the exchange declared; republish
        whatever the previous channel left unconfirmed."""
        async with self._reopen_lock:
            chan = self._chan
            if chan is not None and chan.is_open:
                return chan
            what = f"producer on {self.topic}"
            try:
                conn = await self._backend._connection()
            except BrokerConnectionError as exc:
                if isinstance(exc, ConnectionLostError):
                    raise
                raise ConnectionLostError(f"{what}: {exc}") from exc
            chan = await self._backend._open_channel(conn, what)
            try:
                if self._confirm:
                    await chan.call(chan.ch.confirm_delivery, self._on_confirm)
                await chan.call(
                    chan.ch.exchange_declare,
                    exchange=self._exchange,
                    exchange_type="fanout",
                    durable=True,
                )
            except BaseException as exc:
                await chan.close()
                if not isinstance(exc, Exception):
                    raise  # cancelled: stay cancelled, not a PubSubError
                raise self._backend._translate(exc, f"{what}: declare exchange {self._exchange!r}") from exc
            if chan.reason is not None:  # closed while we declared: no hook will fire
                raise self._backend._translate(chan.reason, what)
            # Renumber what the last channel left unconfirmed before publishing it, so
            # that a failure part-way keeps every entry for the next attempt.
            leftover = list(self._unconfirmed.values())
            self._unconfirmed = dict(enumerate(leftover, 1))
            self._seq = len(leftover)
            self._low = 1
            chan.on_close = self._on_channel_closed
            self._chan = chan
            try:
                for body, props, rk in leftover:
                    chan.ch.basic_publish(self._exchange, rk, body, props)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    chan.ch.close()  # the close hook keeps the entries for recovery
                raise self._backend._translate(exc, f"{what}: republish") from exc
            if leftover:
                log.info("producer on %s republished %d unconfirmed messages", self.topic, len(leftover))
            else:
                self._backend._orphans.discard(self)
            return chan

    def _on_channel_closed(self, reason: BaseException) -> None:
        self._chan = None
        err = self._backend._translate(reason, f"producer on {self.topic}")
        # q2 sends are waiting for their own confirm: they fail and their caller
        # resends, so their messages must not be republished as well.
        for seq, fut in self._waiters.items():
            if not fut.done():
                self._unconfirmed.pop(seq, None)
                _set_exception(fut, err)
        self._waiters.clear()
        drain, self._drain = self._drain, []
        for _, fut in drain:
            _set_exception(fut, err)
        if self._unconfirmed:
            self._backend._orphans.add(self)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag: int = method.delivery_tag
        ok = not isinstance(method, spec.Basic.Nack)
        unconfirmed = self._unconfirmed
        waiters = self._waiters
        if method.multiple:
            for seq in range(self._low, tag + 1):
                if unconfirmed.pop(seq, None) is not None:
                    self._confirmed(seq, ok, waiters)
            if tag >= self._low:
                self._low = tag + 1
        elif unconfirmed.pop(tag, None) is not None:
            self._confirmed(tag, ok, waiters)
        if self._drain:
            left = len(unconfirmed)
            keep = []
            for limit, fut in self._drain:
                if left <= limit:
                    _set_result(fut, None)
                elif not fut.done():
                    keep.append((limit, fut))
            self._drain = keep

    def _confirmed(self, seq: int, ok: bool, waiters: dict[int, asyncio.Future[None]]) -> None:
        fut = waiters.pop(seq, None) if waiters else None
        if ok:
            if fut is not None:
                _set_result(fut, None)
            return
        if fut is not None and not fut.done():
            _set_exception(
                fut,
                PubSubError(
                    f"RabbitMQ refused a message sent to {self.topic} (basic.nack): "
                    "it was not delivered; check the broker's log"
                ),
            )
        else:
            self._rejected += 1

    async def _wait_unconfirmed(self, limit: int) -> None:
        if len(self._unconfirmed) <= limit:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain.append((limit, fut))
        await self._confirm_of(fut)

    async def _confirm_of(self, fut: asyncio.Future[None]) -> None:
        """Wait for a confirm, but not forever: a queue that lost its quorum
        accepts publishes and never confirms them.  The messages stay
        unconfirmed (published again on reconnect; a later nack is counted and
        raised by the next flush)."""
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await fut
        except TimeoutError:
            raise PubSubTimeoutError(
                f"RabbitMQ confirmed nothing sent to {self.topic} within {CONFIRM_TIMEOUT:.0f}s "
                f"({len(self._unconfirmed)} messages unconfirmed); is the queue's quorum up?"
            ) from None

    def _raise_rejected(self) -> None:
        if self._rejected:
            n, self._rejected = self._rejected, 0
            raise PubSubError(
                f"RabbitMQ refused {n} messages sent to {self.topic} (basic.nack): they were "
                "not delivered; check the broker's log"
            )

    # -- the BackendProducer API ------------------------------------------------

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        if self._closed:
            raise ClosedError(f"producer for {self.topic} is closed; create a new one")
        body = encode_payload(self._schema, message, self.topic)
        if len(body) > MAX_MESSAGE_SIZE:
            raise MessageTooLargeError(
                f"message for {self.topic} is {len(body)} bytes; RabbitMQ accepts at most "
                f"{MAX_MESSAGE_SIZE} (max_message_size)"
            )
        if properties:
            props = pika.BasicProperties(
                delivery_mode=self._mode, headers=check_properties(properties, self.topic)
            )
        else:
            props = self._plain_props
        rk = key or ""
        chan = self._chan
        if chan is None or chan.reason is not None:
            chan = await self._open()
        try:
            chan.ch.basic_publish(self._exchange, rk, body, props)
        except Exception as exc:
            raise self._backend._translate(exc, f"send to {self.topic}") from exc
        if self._eager:
            self._backend._push()
        if self._confirm:
            self._seq += 1
            seq = self._seq
            self._unconfirmed[seq] = (body, props, rk)
            if self._await_confirm:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters[seq] = fut
                await self._confirm_of(fut)
                return
            if len(self._unconfirmed) >= MAX_IN_FLIGHT:
                await self._wait_unconfirmed(MAX_IN_FLIGHT // 2)
                return
        self._calls += 1
        if self._calls % _YIELD_EVERY == 0:
            await asyncio.sleep(0)

    async def flush(self) -> None:
        """Wait until the broker has everything sent so far (see the module docstring)."""
        if self._chan is None:
            if self._closed and not self._unconfirmed:
                return
            if self._unconfirmed or not self._confirm:
                await self._open()
        chan = self._chan
        if self._confirm:
            await self._wait_unconfirmed(0)
        elif chan is not None:
            try:
                await chan.call(chan.ch.basic_qos, prefetch_count=0)
            except Exception as exc:
                raise self._backend._translate(exc, f"flush {self.topic}") from exc
        self._raise_rejected()

    async def close(self) -> None:
        """Flush, then close the channel.  Idempotent.

        If the flush fails because the broker is unreachable, the unconfirmed
        messages stay with the backend, which publishes them when it next
        connects, and the error is raised so that the caller knows.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush()
        finally:
            chan, self._chan = self._chan, None
            if chan is not None:
                chan.on_close = None
                await chan.close()
            if not self._unconfirmed:
                self._backend._orphans.discard(self)
            self._backend._children.discard(self)

    async def _recover(self) -> None:
        """Republish unconfirmed messages after a reconnect (run by the backend)."""
        await self._open()
        await self._wait_unconfirmed(0)
        if self._closed:
            chan, self._chan = self._chan, None
            if chan is not None:
                chan.on_close = None
                await chan.close()

    @property
    def unconfirmed(self) -> int:
        """Messages sent but not yet confirmed by the broker."""
        return len(self._unconfirmed)

    def __repr__(self) -> str:
        return (
            f"<RabbitMQProducer topic={self.topic!r} exchange={self._exchange!r} "
            f"unconfirmed={len(self._unconfirmed)} closed={self._closed}>"
        )


# -- consumer -----------------------------------------------------------------


class RabbitMQConsumer:
    """Consumes one subscription queue on its own channel.

    Once the channel or connection is gone the consumer is dead: pending and
    later calls raise ``ConnectionLostError`` (or ``ClosedError`` when the
    queue was deleted under it), and the broker redelivers what it had not
    acknowledged.  The resilient ``Consumer`` creates a new one.
    """

    def __init__(
        self,
        backend: RabbitMQBackend,
        parsed: Topic,
        subscription: str,
        schema: type[Any] | None,
        queue: str,
        chan: _Channel,
    ) -> None:
        self._backend = backend
        self.topic = str(parsed)
        self.subscription = subscription
        self._schema = schema
        self._queue = queue
        self._chan = chan
        self._buf: deque[BaseMessage] = deque()
        self._waiters: deque[asyncio.Future[BaseMessage]] = deque()
        self._unacked: dict[int, BaseMessage] = {}
        self._error: PubSubError | None = None
        self._closed = False
        self._calls = 0
        #: delivery tags acknowledged but not yet written (see ``acknowledge``)
        self._acks: list[int] = []
        chan.on_close = self._on_channel_closed
        chan.ch.add_on_cancel_callback(self._on_cancel)

    # -- pika callbacks -----------------------------------------------------------

    def _on_message(self, _ch: Any, method: Any, props: Any, body: bytes) -> None:
        if self._closed:
            return  # in flight when we closed: the broker requeues it
        headers = props.headers
        count = 0
        if headers:
            if "x-death" in headers or any(type(v) is not str for v in headers.values()):
                headers, count = _split_headers(
                    headers, self._queue, self._backend.returns_per_redelivery
                )
        else:
            headers = {}
        tag = method.delivery_tag
        msg = BaseMessage(body, headers, self.topic, self._schema, count, tag)
        self._unacked[tag] = msg
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(msg)
                return
        self._buf.append(msg)

    def _on_channel_closed(self, reason: BaseException) -> None:
        if self._closed:
            return
        self._fail(self._backend._translate(reason, f"consumer {self.subscription!r} on {self.topic}"))

    def _on_cancel(self, _frame: Any) -> None:
        """The broker cancelled us: the queue was deleted, or its node is going down."""
        if self._closed or self._error is not None:
            return
        self._buf.clear()
        self._backend._spawn(self._classify_cancel())

    async def _classify_cancel(self) -> None:
        what = f"consumer {self.subscription!r} on {self.topic}"
        err: PubSubError
        try:
            exists = await self._backend._passive_declare(self._queue)
        except PubSubError as exc:
            err = exc if isinstance(exc, BrokerConnectionError) else ConnectionLostError(
                f"{what} was cancelled by the broker ({exc})"
            )
        else:
            if exists:
                err = ConnectionLostError(f"{what} was cancelled by the broker; subscribe again")
            else:
                err = ClosedError(
                    f"{what}: queue {self._queue!r} was deleted (the subscription is gone)"
                )
        self._fail(err)
        await self._chan.close()

    def _fail(self, err: PubSubError) -> None:
        """Dead: drop what the broker will redeliver, wake every waiter."""
        if self._error is not None:
            return
        self._error = err
        self._buf.clear()
        self._unacked.clear()
        self._acks.clear()
        waiters, self._waiters = self._waiters, deque()
        for fut in waiters:
            _set_exception(fut, err)
        self._backend._children.discard(self)

    def _raise(self) -> None:
        err = self._error
        if err is not None:
            raise type(err)(str(err)) from err
        if self._closed:
            raise ClosedError(f"consumer {self.subscription!r} on {self.topic} is closed")

    # -- the BackendConsumer API ------------------------------------------------

    async def receive(self, timeout: float | None = None) -> BaseMessage:  # noqa: ASYNC109 (contract)
        if self._buf:
            msg = self._buf.popleft()
            self._calls += 1
            if self._calls % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            return msg
        self._raise()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[BaseMessage] = loop.create_future()
        self._waiters.append(fut)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._expire, fut, timeout)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Handed over just as we were cancelled: keep it for the next receive.
                self._buf.appendleft(fut.result())
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, fut: asyncio.Future[BaseMessage], timeout: float) -> None:
        if fut.done():
            return
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)
        fut.set_exception(
            PubSubTimeoutError(
                f"no message on {self.topic} (subscription {self.subscription!r}) within {timeout}s"
            )
        )

    def _outstanding(self, message: Any, verb: str) -> int | None:
        """The delivery tag of ``message`` if it is still ours to settle, else None."""
        if not isinstance(message, BaseMessage):
            raise TypeError(
                f"consumer on {self.topic} can only {verb} messages it received, "
                f"got {type(message).__name__}"
            )
        tag = message.handle
        if self._unacked.get(tag) is message:
            del self._unacked[tag]
            return tag  # type: ignore[no-any-return]
        self._raise()
        return None  # settled already, or another consumer's message: a no-op

    async def acknowledge(self, message: Any) -> None:
        """Settle the message; the ``basic.ack`` goes out once the loop is free.

        Acks are collected and written in one go at the next turn of the event
        loop, after whatever the acknowledging task made ready: a caller woken
        by this message (a reply, say) runs first, and a burst of acks costs
        one write.  pika buffers an ack until the socket is writable anyway, so
        nothing is promised earlier than before: an ack that a dropped channel
        never carried means the broker redelivers the message.
        """
        tag = self._outstanding(message, "acknowledge")
        if tag is not None:
            acks = self._acks
            acks.append(tag)
            if len(acks) == 1:
                asyncio.get_running_loop().call_soon(self._send_acks)

    def _send_acks(self) -> None:
        tags, self._acks = self._acks, []
        if not tags or self._error is not None:
            return
        ch = self._chan.ch
        try:
            for tag in tags:
                ch.basic_ack(tag)
        except Exception as exc:
            # The channel closed under us: the broker redelivers these (at least
            # once).  Anything else is a fault worth seeing.
            level = logging.DEBUG if _is_connection_error(exc) else logging.WARNING
            log.log(level, "acks on %s not sent (%s); they will be redelivered",
                    self.topic, _reason(exc))

    async def negative_acknowledge(self, message: Any) -> None:
        """Dead-letter the message to the back of its own queue, counted in ``x-death``."""
        tag = self._outstanding(message, "negative_acknowledge")
        if tag is not None:
            self._send_acks()
            try:
                self._chan.ch.basic_nack(tag, multiple=False, requeue=False)
            except Exception as exc:
                raise self._backend._translate(exc, f"negative_acknowledge on {self.topic}") from exc

    async def unsubscribe(self) -> None:
        """Delete the subscription's queue (and its backlog), then close.

        A consumer whose connection dropped still deletes its queue, over a new
        connection: unsubscribing is about the subscription, not this consumer.
        """
        if self._closed:
            raise ClosedError(f"consumer {self.subscription!r} on {self.topic} is closed")
        what = f"unsubscribe {self.subscription!r} from {self.topic}"
        self._send_acks()
        try:
            if self._chan.is_open and self._error is None:
                await self._chan.call(self._chan.ch.queue_delete, self._queue)
            else:
                await self._backend._delete_queues([self._queue], what)
        except Exception as exc:
            raise self._backend._translate(exc, what) from exc
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the channel; the broker requeues every unacknowledged message."""
        if self._closed:
            return
        self._send_acks()  # before the channel closes, or they would be redelivered
        self._closed = True
        self._chan.on_close = None
        self._buf.clear()
        self._unacked.clear()
        waiters, self._waiters = self._waiters, deque()
        err = ClosedError(f"consumer {self.subscription!r} on {self.topic} is closed")
        for fut in waiters:
            _set_exception(fut, err)
        self._backend._children.discard(self)
        await self._chan.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return iterate_messages(self)

    def __repr__(self) -> str:
        return (
            f"<RabbitMQConsumer topic={self.topic!r} subscription={self.subscription!r} "
            f"queue={self._queue!r} buffered={len(self._buf)} unacked={len(self._unacked)}>"
        )


# -- backend ------------------------------------------------------------------


class RabbitMQBackend:
    """The RabbitMQ backend (see the module docstring for every choice it makes)."""

    name = "rabbitmq"
    capabilities = _CAPABILITIES

    def __init__(
        self,
        host: str = "localhost",
        port: int = 5672,
        username: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        queue_type: str = "quorum",
        returns_per_redelivery: int = 10,
        heartbeat: int = 30,
    ) -> None:
        if not isinstance(host, str) or not host or "/" in host:
            raise ConfigurationError(
                f"--rabbitmq-host must be a host name or address, got {shown(host)}"
            )
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"--rabbitmq-port must be 1-65535, got {shown(port)}")
        if not isinstance(username, str) or not username:
            raise ConfigurationError("--rabbitmq-username must not be empty")
        if not isinstance(password, str):
            raise ConfigurationError("--rabbitmq-password must be a string")
        if queue_type not in _QUEUE_TYPES:
            raise ConfigurationError(
                f"--rabbitmq-queue-type must be one of {', '.join(_QUEUE_TYPES)}, got {shown(queue_type)}"
            )
        if not isinstance(returns_per_redelivery, int) or returns_per_redelivery < 1:
            raise ConfigurationError(
                "--rabbitmq-returns-per-redelivery must be an int >= 1, "
                f"got {shown(returns_per_redelivery)}"
            )
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or not 0 <= heartbeat <= 65535:
            raise ConfigurationError(
                f"--rabbitmq-heartbeat must be 0-65535 seconds, got {shown(heartbeat)}"
            )
        self.queue_type = queue_type
        self.returns_per_redelivery = returns_per_redelivery
        #: pika makes this the connection's heartbeat whatever the broker proposes
        #: (None used to take the broker's 60 s); a link that goes quiet is
        #: closed by pika's heartbeat checker (measured in tests/backends/test_stall.py).
        self.heartbeat = heartbeat
        self.host = host
        self.port = port
        self.username = username
        self.vhost = vhost or "/"
        self.__password = password
        #: shown to operators (``rabbitmqctl list_connections user_provided_name``)
        self._connection_name = f"trustgraph-pubsub:{os.getpid()}:{id(self):x}"
        self._conn: Any = None
        self._conn_closed: asyncio.Future[None] | None = None
        self._flush_now: Callable[[], None] | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._children: set[RabbitMQProducer | RabbitMQConsumer] = set()
        self._orphans: set[RabbitMQProducer] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port} (vhost {self.vhost!r})"

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._is_connected() else "idle"
        return (
            f"<RabbitMQBackend {self.username}@{self.host}:{self.port} vhost={self.vhost!r} "
            f"{state}>"
        )

    def _is_connected(self) -> bool:
        return self._conn is not None and bool(self._conn.is_open)

    # -- connection -------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("RabbitMQ backend is closed; create a new one with get_pubsub()")

    async def _connection(self) -> Any:
        """The open connection, connecting (once, for every caller) if needed."""
        self._check()
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (tests, asyncio.run twice): the old connection is unusable.
            self._loop, self._conn, self._lock = loop, None, asyncio.Lock()
        conn = self._conn
        if conn is not None and conn.is_open:
            return conn
        assert self._lock is not None
        async with self._lock:
            self._check()
            conn = self._conn
            if conn is not None and conn.is_open:
                return conn
            conn = await self._connect(loop)
            self._conn = conn
            for producer in list(self._orphans):
                self._spawn(self._recover(producer))
            return conn

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Any:
        params = pika.ConnectionParameters(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.username, self.__password),
            connection_attempts=1,
            retry_delay=0,
            heartbeat=self.heartbeat,
            socket_timeout=CONNECT_TIMEOUT,
            stack_timeout=CONNECT_TIMEOUT,
            client_properties={"connection_name": self._connection_name},
        )
        opened: asyncio.Future[Any] = loop.create_future()
        closed: asyncio.Future[None] = loop.create_future()

        def on_open(conn: Any) -> None:
            _set_result(opened, conn)

        def on_open_error(_conn: Any, exc: BaseException) -> None:
            _set_exception(opened, exc)
            _set_result(closed, None)

        def on_close(conn: Any, reason: BaseException) -> None:
            _set_result(closed, None)
            if conn is self._conn:
                self._conn = None
                log.warning("connection to RabbitMQ at %s lost: %s", self._where, reason)

        conn = AsyncioConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + 2):
                await opened
        except TimeoutError as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise BrokerConnectionError(
                f"timed out after {CONNECT_TIMEOUT:.0f}s connecting to RabbitMQ at {self._where}; "
                "check --rabbitmq-host/--rabbitmq-port (RABBITMQ_HOST/RABBITMQ_PORT)"
            ) from exc
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        except (
            pika.exceptions.ProbableAuthenticationError,
            pika.exceptions.AuthenticationError,
        ) as exc:
            raise AuthenticationError(
                f"RabbitMQ at {self._where} refused the credentials of user {self.username!r} "
                "(ACCESS_REFUSED); check --rabbitmq-username/--rabbitmq-password "
                "(RABBITMQ_USERNAME/RABBITMQ_PASSWORD)"
            ) from exc
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise AuthenticationError(
                f"RabbitMQ at {self.host}:{self.port} denied user {self.username!r} access to "
                f"vhost {self.vhost!r} (it does not exist or the user has no permission); "
                "check --rabbitmq-vhost (RABBITMQ_VHOST)"
            ) from exc
        except Exception as exc:
            raise BrokerConnectionError(
                f"cannot connect to RabbitMQ at {self._where}: {_connect_reason(exc)}; is the broker "
                "running? check --rabbitmq-host/--rabbitmq-port (RABBITMQ_HOST/RABBITMQ_PORT)"
            ) from exc
        self._conn_closed = closed
        self._flush_now = _coalesce_writes(conn)
        log.debug("connected to RabbitMQ at %s", self._where)
        return conn

    async def _open_channel(self, conn: Any, what: str) -> _Channel:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[Any] = loop.create_future()
        try:
            ch = conn.channel(on_open_callback=lambda _c: _set_result(opened, None))
        except Exception as exc:
            raise self._translate(exc, f"{what}: open channel") from exc
        # Registered before any I/O can happen (we are on the loop): a channel that
        # fails to open fails ``opened`` through the close callback.
        chan = _Channel(ch, loop)
        chan.track(opened)
        try:
            async with asyncio.timeout(RPC_TIMEOUT):
                await opened
        except BaseException as exc:
            await chan.close()
            if not isinstance(exc, Exception):
                raise  # cancelled: stay cancelled, not a PubSubError
            raise self._translate(exc, f"{what}: open channel") from exc
        return chan

    def _translate(self, exc: BaseException, what: str) -> PubSubError:
        """A pika (or asyncio) failure as the SDK's own exception, naming ``what``."""
        if isinstance(exc, PubSubError):
            return exc
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
            code, text = exc.reply_code, exc.reply_text
            if code == 404:
                return QueueNotFoundError(f"{what}: {text}")
            if code == 406:
                return ConfigurationError(
                    f"{what}: RabbitMQ refused it: {text}.  A queue keeps the arguments it was "
                    "declared with (a topic has one qos: q0 queues are classic and transient, "
                    "q1/q2 queues are durable quorum queues); delete it to redeclare it"
                )
            if code in (403, 405) and "exclusive" in text:
                return PubSubError(
                    f"{what}: the queue is in exclusive use by another connection ({text})"
                )
            if code == 403:
                return AuthenticationError(
                    f"{what}: user {self.username!r} may not do this on RabbitMQ at "
                    f"{self._where} ({text})"
                )
            return PubSubError(f"{what}: RabbitMQ closed the channel ({code} {text})")
        if isinstance(exc, pika.exceptions.ChannelClosedByClient):
            return ClosedError(f"{what}: closed")
        if isinstance(exc, TimeoutError):
            return PubSubTimeoutError(
                f"{what}: RabbitMQ at {self._where} did not answer within {RPC_TIMEOUT:.0f}s"
            )
        if _is_connection_error(exc):
            return ConnectionLostError(
                f"{what}: connection to RabbitMQ at {self._where} lost ({_reason(exc)})"
            )
        return PubSubError(f"{what}: {type(exc).__name__}: {_reason(exc)}")

    def _push(self) -> None:
        """Send what pika has queued now rather than at the next loop iteration."""
        flush = self._flush_now
        if flush is not None and self._conn is not None:
            flush()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover(self, producer: RabbitMQProducer) -> None:
        try:
            await producer._recover()
        except Exception as exc:
            log.warning(
                "could not republish %d unconfirmed messages to %s yet: %s",
                producer.unconfirmed, producer.topic, exc,
            )

    # -- admin round trips on short-lived channels ---------------------------------

    async def _scratch(self, what: str) -> _Channel:
        return await self._open_channel(await self._connection(), what)

    async def _passive_declare(self, queue: str) -> bool:
        """Whether ``queue`` exists (a 404 closes the channel, so it is a scratch one).

        A 405 (RESOURCE_LOCKED) is another connection's exclusive queue: it exists.
        """
        chan = await self._scratch(f"look up queue {queue!r}")
        _LOOKUPS.channels.add(chan.ch)
        try:
            await chan.call(chan.ch.queue_declare, queue, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return False
            if exc.reply_code == 405:
                return True
            raise self._translate(exc, f"look up queue {queue!r}") from exc
        except Exception as exc:
            raise self._translate(exc, f"look up queue {queue!r}") from exc
        finally:
            await chan.close()

    async def _declare_subscription(
        self, chan: _Channel, parsed: Topic, queue: str, *, ephemeral: bool = False
    ) -> None:
        """Exchange, registry entry (for a new queue), queue and binding, on ``chan``.

        ``ephemeral``: an exclusive, auto-delete, non-durable classic queue,
        not registered (see the module docstring).
        """
        exchange = naming.check_rabbitmq_name(naming.rabbitmq_exchange(parsed), parsed)
        registry = naming.check_rabbitmq_name(naming.rabbitmq_registry_queue(parsed), parsed)
        ch = chan.ch
        await chan.call(ch.exchange_declare, exchange=exchange, exchange_type="fanout", durable=True)
        if ephemeral:
            await chan.call(
                ch.queue_declare, queue, durable=False, exclusive=True, auto_delete=True,
                arguments=_queue_arguments(queue, False, self.queue_type),
            )
            await chan.call(ch.queue_bind, queue, exchange)
            return
        if not await self._passive_declare(queue):
            # Registered before it exists: a crash in between leaves a harmless stale
            # entry, never an orphan queue that deleting the topic would miss.
            await chan.call(ch.queue_declare, registry, durable=True,
                            arguments={"x-queue-type": "classic"})
            ch.basic_publish(
                "", registry, queue.encode("utf-8"),
                pika.BasicProperties(delivery_mode=_PERSISTENT),
            )
        durable = parsed.qos != "q0"
        await chan.call(
            ch.queue_declare, queue, durable=durable,
            arguments=_queue_arguments(queue, durable, self.queue_type),
        )
        await chan.call(ch.queue_bind, queue, exchange)

    async def _registered_queues(self, registry: str) -> list[str]:
        """The subscription queues a topic's registry names (read without consuming)."""
        if not await self._passive_declare(registry):
            return []
        chan = await self._scratch(f"read {registry!r}")
        names: dict[str, None] = {}
        current: list[asyncio.Future[bytes | None]] = []

        def on_empty(_frame: Any) -> None:
            if current:
                _set_result(current[-1], None)

        def on_ok(_ch: Any, _method: Any, _props: Any, body: bytes) -> None:
            if current:
                _set_result(current[-1], body)

        chan.ch.add_callback(on_empty, [spec.Basic.GetEmpty], one_shot=False)
        try:
            while True:
                fut: asyncio.Future[bytes | None] = chan.future()
                current.append(fut)
                chan.ch.basic_get(registry, on_ok, auto_ack=False)
                async with asyncio.timeout(RPC_TIMEOUT):
                    body = await fut
                current.pop()
                if body is None:
                    break
                names[body.decode("utf-8", "replace")] = None
        except Exception as exc:
            raise self._translate(exc, f"read subscriptions of {registry!r}") from exc
        finally:
            # Closing returns the unacknowledged entries to the registry.
            await chan.close()
        return list(names)

    # -- the PubSubBackend API ----------------------------------------------------

    async def create_producer(
        self, topic: str, schema: type[Any] | None, **opts: Any
    ) -> RabbitMQProducer:
        """A producer.  ``latency_bound=True`` (requests, replies, pushes) writes each
        message to the socket at once instead of at the next loop iteration."""
        self._check()
        parsed = naming.parse(topic)
        producer = RabbitMQProducer(self, parsed, schema, bool(opts.get("latency_bound")))
        await self._connection()  # a refused first connection is not a "lost" one
        await producer._open()
        self._children.add(producer)
        return producer

    async def create_consumer(
        self,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        initial_position: InitialPosition = "latest",
        consumer_type: ConsumerType = "shared",
        **opts: Any,
    ) -> RabbitMQConsumer:
        """Declare the subscription queue, then consume it (it exists on return).

        ``prefetch`` (int >= 1) bounds the unacknowledged messages the broker
        pushes ahead; the resilient ``Consumer`` passes its concurrency.
        ``ephemeral=True``: an exclusive auto-delete queue, deleted by the
        broker with this consumer or its connection (see the module docstring).
        """
        self._check()
        parsed = naming.parse(topic)
        queue = naming.check_rabbitmq_name(naming.rabbitmq_queue(parsed, subscription), parsed)
        if initial_position not in _POSITIONS:
            raise ConfigurationError(
                f"consumer on {topic}: initial_position must be 'earliest' or 'latest', "
                f"got {shown(initial_position)}"
            )
        if consumer_type not in _CONSUMER_TYPES:
            if consumer_type in ("exclusive", "failover"):
                raise UnsupportedError(
                    f"consumer on {topic}: the RabbitMQ backend has no {consumer_type} consumers "
                    f"(Capabilities.consumer_types is {sorted(_CONSUMER_TYPES)}: quorum queues "
                    "ignore exclusive consumers); use 'shared' with one consumer"
                )
            raise ConfigurationError(
                f"consumer on {topic}: consumer_type must be one of {sorted(_CONSUMER_TYPES)}, "
                f"got {shown(consumer_type)}"
            )
        prefetch = opts.get("prefetch")
        if prefetch is None:
            prefetch = DEFAULT_PREFETCH
        if not isinstance(prefetch, int) or isinstance(prefetch, bool) or not 0 < prefetch < 65536:
            raise ConfigurationError(
                f"consumer on {topic}: prefetch must be an int from 1 to 65535, got {shown(prefetch)}"
            )
        what = f"subscribe {subscription!r} to {topic}"
        conn = await self._connection()
        chan = await self._open_channel(conn, what)
        consumer = RabbitMQConsumer(self, parsed, subscription, schema, queue, chan)
        try:
            await self._declare_subscription(
                chan, parsed, queue, ephemeral=bool(opts.get("ephemeral"))
            )
            await chan.call(chan.ch.basic_qos, prefetch_count=prefetch)
            await chan.call(
                chan.ch.basic_consume,
                queue,
                consumer._on_message,
                auto_ack=False,
            )
        except BaseException as exc:
            await consumer.close()
            if not isinstance(exc, Exception):
                raise  # cancelled: stay cancelled, not a PubSubError
            raise self._translate(exc, what) from exc
        self._children.add(consumer)
        return consumer

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Declare the subscription queue (idempotent, as AMQP declares are)."""
        self._check()
        parsed = naming.parse(topic)
        queue = naming.check_rabbitmq_name(naming.rabbitmq_queue(parsed, subscription), parsed)
        what = f"create queue {subscription!r} on {topic}"
        chan = await self._scratch(what)
        try:
            await self._declare_subscription(chan, parsed, queue)
        except Exception as exc:
            raise self._translate(exc, what) from exc
        finally:
            await chan.close()

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        await self.create_queue(topic, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        self._check()
        parsed = naming.parse(topic)
        queue = naming.check_rabbitmq_name(naming.rabbitmq_queue(parsed, subscription), parsed)
        return await self._passive_declare(queue)

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """Delete one subscription's queue, or (``subscription=None``) the topic's
        exchange with every subscription queue its registry names.  Deleting
        what does not exist is not an error."""
        self._check()
        parsed = naming.parse(topic)
        if subscription is not None:
            queues = [
                naming.check_rabbitmq_name(naming.rabbitmq_queue(parsed, subscription), parsed)
            ]
        else:
            registry = naming.check_rabbitmq_name(naming.rabbitmq_registry_queue(parsed), parsed)
            queues = [*await self._registered_queues(registry), registry]
        what = f"delete {topic}" + (f" subscription {subscription!r}" if subscription else "")
        exchange = None
        if subscription is None:
            exchange = naming.check_rabbitmq_name(naming.rabbitmq_exchange(parsed), parsed)
        await self._delete_queues(queues, what, exchange)

    async def _delete_queues(self, queues: list[str], what: str, exchange: str | None = None) -> None:
        """Delete ``queues`` (then ``exchange``) on a scratch channel; missing ones are fine."""
        chan = await self._scratch(what)
        try:
            for queue in queues:
                await chan.call(chan.ch.queue_delete, queue)
            if exchange is not None:
                await chan.call(chan.ch.exchange_delete, exchange)
        except Exception as exc:
            raise self._translate(exc, what) from exc
        finally:
            await chan.close()

    async def close(self) -> None:
        """Close every producer (flushing it) and consumer, then the connection."""
        if self._closed:
            return
        children = list(self._children)
        for child in children:
            try:
                async with asyncio.timeout(RPC_TIMEOUT):
                    await child.close()
            except Exception as exc:
                log.warning("closing %r: %s", child, exc)
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        lost = sum(p.unconfirmed for p in self._orphans)
        if lost:
            log.warning(
                "RabbitMQ backend closed with %d unconfirmed messages that could not be "
                "republished", lost,
            )
        self._orphans.clear()
        conn, self._conn = self._conn, None
        closed = self._conn_closed
        if conn is not None and self._loop is asyncio.get_running_loop():
            if conn.is_open:
                with contextlib.suppress(Exception):
                    conn.close()
            if closed is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(RPC_TIMEOUT):
                        await closed


#: Largest write ``_coalesce_writes`` builds: big enough for hundreds of small
#: frames, small enough that a partial send never re-copies much.
_COALESCE_MAX = 64 * 1024


def _coalesce_writes(conn: Any) -> Callable[[], None] | None:
    """Send the frames pika has queued with as few ``send()`` calls as possible.

    pika's asyncio transport queues every frame as its own chunk and sends one
    chunk per system call: three per published message, one per ack.  On
    this machine a loopback ``send()`` costs tens of microseconds, the largest
    per-message cost of the whole publish path (measured with cProfile).
    Joining the queued chunks, up to ``_COALESCE_MAX`` bytes per write, keeps
    the bytes and their order and only cuts the system calls.  The transport
    internals used (``_tx_buffers``, ``_produce``) exist in pika 1.3 and 1.4;
    without them pika's own behaviour is kept.

    Returns a function that sends what is queued now, or None.  pika writes
    only when the loop next reports the socket writable, one iteration later;
    latency-bound sends skip that wait.  The function is the transport's own
    writability handler, so pika's state checks, its handling of a full
    socket (the rest stays queued for the writer) and of errors all apply.
    """
    transport = getattr(conn, "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    produce = getattr(transport, "_produce", None)
    writable = getattr(transport, "_on_socket_writable", None)
    if (
        transport is None
        or not isinstance(buffers, deque)
        or not callable(produce)
        or not callable(writable)
    ):
        return None

    def coalescing_produce() -> None:
        if len(buffers) > 1:
            chunks = list(buffers)
            buffers.clear()
            part: list[bytes] = []
            size = 0
            for chunk in chunks:
                if part and size + len(chunk) > _COALESCE_MAX:
                    buffers.append(b"".join(part))
                    part, size = [], 0
                part.append(chunk)
                size += len(chunk)
            buffers.append(part[0] if len(part) == 1 else b"".join(part))
        produce()

    transport._produce = coalescing_produce

    def flush_now() -> None:
        if buffers:
            writable()

    return flush_now


def _connect_reason(exc: BaseException) -> str:
    """The innermost cause of a failed pika connection workflow ("Connection refused")."""
    seen = 0
    while seen < 5:
        seen += 1
        inner = getattr(exc, "exceptions", None)
        if inner:
            exc = inner[-1]
            continue
        inner = getattr(exc, "exception", None)
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if (
            isinstance(exc, pika.exceptions.AMQPConnectionError)
            and exc.args
            and isinstance(exc.args[0], BaseException)
        ):
            exc = exc.args[0]
            continue
        break
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    """A pika exception as short text (pika's own ``str`` of some is empty)."""
    text = str(exc) or repr(exc)
    return text.replace("\n", " ")[:500]
