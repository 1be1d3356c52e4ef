"""The Apache Pulsar backend, on ``pulsar-client``'s asyncio API.

One ``pulsar.asyncio.Client`` per backend, made in a worker thread on the
first ``create_*`` call.  Producers and consumers are ``pulsar.asyncio``
objects; the hot paths call their C++ handles directly with callbacks that
cross into the event loop through ``loop.call_soon_threadsafe`` (or run
inline when the client completes on the calling thread), so nothing blocks
the loop.

Names (``trustgraph_pubsub.naming``): q0 -> ``non-persistent://t/ns/queue``,
q1/q2 -> ``persistent://t/ns/queue``; a full Pulsar URI passes through.

Choices where the contract leaves room, with why:

* **Sends are pipelined.**  Awaiting each send's broker receipt costs a round
  trip (and a batching delay) per message; a Python callback per message
  costs most of the client's rate.  So at q0/q1 ``send`` hands the message to
  the client without a callback and returns.  A message the client fails
  reaches only its callback, so loss is prevented or found another way:

  - a send first takes a slot in the window (``window`` messages,
    ``window_bytes``), awaiting the client's flush when it is full, so the
    client's queue never overflows (it would refuse the excess);
  - a message larger than any the broker has confirmed is a *probe*, sent
    with a callback: the client refuses one above the broker's own limit
    (``MessageTooBig``, when ``--pulsar-max-message-size`` exceeds it), which
    that send raises as ``MessageTooLargeError``;
  - while messages are unconfirmed, one background flush is attached to the
    newest (the *watch*, ``WATCH_DELAY`` after the first): the client fails
    every pending message together when the oldest outlives
    ``send_timeout_ms``, and a flush issued afterwards would succeed.

  The client keeps unconfirmed messages across a reconnect and resends them
  for ``send_timeout_ms``.  When a flush or the watch finds that it gave up,
  ``send``, ``flush`` and ``close`` raise the mapped error (``ConnectionLostError``
  for a lost broker, so that ``Producer`` recreates the producer) saying how
  many messages may be lost; a failure the watch finds is also logged at
  WARNING.  q2 sends await the broker's receipt, one by one.
* **Batching** is on for throughput producers (the client's default 10 ms
  delay) and off for ``latency_bound=True`` (requests, replies, pushes), q2
  and chunking producers: awaiting a batched send waits out the delay.  As
  on any Pulsar broker without batch-index acknowledgement, the broker learns
  of acks per batch: a consumer that closes part-way through a batch leaves
  the whole batch to be redelivered, acked messages included (at-least-once
  duplicates, never a loss).  Batch-index acks stay off: pulsar-lite treats
  them as acks of the whole batch and loses the rest.
* **Chunking**: ``create_producer(..., chunking=True)`` lets a payload exceed
  the broker's ``maxMessageSize``; otherwise a payload (with its properties)
  larger than it less 16 KiB of metadata raises ``MessageTooLargeError``
  before it reaches the client (which would drop it).
* **Consumers** keep one ``receive_async`` outstanding; ``prefetch`` is the
  client's receiver queue.  A message the client already holds is delivered
  inline, so a busy stream costs no thread hop per message.  Acks and nacks
  are asynchronous calls into the client without a callback (a lost ack only
  means a redelivery); the client groups acks and sends them every 100 ms,
  so ``unsubscribe`` lets that pass first.  Nacked messages come back after
  ``nack_delay_ms`` (default 1 s instead of the client's 60 s).
  ``Message.redelivery_count`` is Pulsar's own count.
* **close never unsubscribes**: it would delete the durable cursor and the
  backlog.  ``unsubscribe()`` does.  Except for ephemeral subscriptions:
* **Ephemeral subscriptions** (``create_consumer(..., ephemeral=True)``) are
  only partly native.  Pulsar has non-durable subscriptions (the broker
  drops them when the last consumer disconnects), but pulsar-client 3.13
  does not expose the subscription mode for consumers (``subscribe()`` and
  ``ConsumerConfiguration`` have no such option); only readers use one, a
  reader has no acks or shared delivery, and pulsar-lite was seen to keep a
  reader's subscription, with its cursor, after the reader closed.  So on a
  persistent topic an ephemeral subscription is a durable one whose
  ``close()`` unsubscribes it, best effort (a failure is logged at DEBUG and
  the consumer closed): a process that dies without closing (SIGKILL)
  leaves the subscription and its backlog on the broker.  The closest
  broker-side remedy is the namespace policy
  ``subscriptionExpirationTimeMinutes`` (a real Pulsar deletes
  subscriptions inactive that long; pulsar-lite has no admin API to set
  it).  On a q0 (``non-persistent://``) topic every subscription already
  goes with its last consumer.
* **Consumer types** ``shared``, ``exclusive``, ``failover``.  A second
  consumer on an exclusive subscription, or a consumer of another type,
  opened through the same service URL in this process is refused at once
  with ``PubSubError`` (Pulsar's ConsumerBusy), without asking the broker.
* **Reconnection** is the client's: producers and consumers reconnect by
  themselves after a broker restart, with unacked messages redelivered.  A
  call that finds the connection gone for good raises ``ConnectionLostError``.
  A create that cannot reach the broker raises ``BrokerConnectionError`` after
  ``operation_timeout`` seconds, with what a TCP probe of the address found.
* **Queue lifecycle.**  With ``admin_url`` the admin REST API creates, checks
  and deletes topics and subscriptions (``Capabilities.queue_lifecycle``).
  Without it, queues are implicit: ``create_queue``/``ensure_queue`` still
  make the durable subscription, by subscribing and closing (a Pulsar user's
  way to make messages wait for a consumer); ``delete_queue(topic, sub)``
  unsubscribes it; ``delete_queue(topic)`` cannot find a topic's
  subscriptions and does nothing; ``queue_exists`` cannot know and raises
  ``UnsupportedError`` rather than guess.
* **Auth**: ``api_key`` is a token (``AuthenticationToken``); it never
  appears in a repr, log line or error.  ``listener`` picks an advertised
  listener.
* **The client's own log** (C++) goes to its console logger (standard
  output) at WARN and above, not to ``logging``: with a Python logger the client calls into Python for
  every line it produces, debug lines for every message included, which
  halves the send rate (measured) and has deadlocked at interpreter exit in
  past client versions.

Private internals of pulsar-client this module relies on (checked without a
broker by ``tests/unit/test_client_internals.py``; ``pyproject.toml`` keeps
the client to the minor versions that passed):

* ``_pulsar``, the C extension module: the hot paths call it directly,
  skipping ``pulsar.asyncio``'s future and wrapper per call.
* ``_pulsar.Result`` (``_R``): the client's result codes, mapped to the SDK's errors.
* ``_pulsar.MessageBuilder`` (``content``, ``property``, ``partition_key``,
  ``build``): each message is built here rather than by ``Producer.send``.
* ``_pulsar.Message`` (``data``, ``properties``, ``redelivery_count``): what
  ``receive_async`` delivers, kept as the message's ack handle.
* ``pulsar.asyncio.Producer._producer``: the C++ producer, for ``send_async``
  and ``flush_async`` with this module's own callbacks (or none).
* ``pulsar.asyncio.Consumer._consumer``: the C++ consumer, for
  ``receive_async``, ``acknowledge_async``, ``negative_acknowledge_async``
  (pulsar-client 3.10 and later) and ``unsubscribe_async``.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import _pulsar  # type: ignore[import-not-found]  # pulsar-client's C extension
import pulsar
import pulsar.asyncio as pulsar_asyncio

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
    BadTopicError,
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
from ..redact import redact_url, shown

log = logging.getLogger(__name__)

#: bytes kept back from ``maxMessageSize``: the C++ client reserves 10 KiB for message
#: metadata, and a batch adds per-message framing on top (6 KiB is ample for it).
METADATA_RESERVE = 16 * 1024
#: messages / bytes a pipelined producer may have in flight before ``send`` awaits a flush.
WINDOW = 10_000
WINDOW_BYTES = 32 * 1024 * 1024
#: seconds from the first unconfirmed pipelined send to the background flush that watches
#: it (``PulsarProducer._watch``): well under the client's 100 ms reconnect backoff, and
#: long enough that it rarely cuts a batch short.
WATCH_DELAY = 0.05
#: the client's default batch size, lowered to the broker's limit when that is smaller.
BATCH_BYTES = 128 * 1024
#: seconds for the client's grouped acks (sent every 100 ms) to reach the broker.
ACK_FLUSH = 0.2
#: calls answered without waiting before one yields to the event loop (inlined counters:
#: a coroutine per call would cost more than the call).
_YIELD_EVERY = 64

#: seconds a producer stays out of the client after a batched probe was answered
_RELEASE_PAUSE = 0.005

_CONSUMER_TYPES: dict[str, Any] = {
    "shared": pulsar.ConsumerType.Shared,
    "exclusive": pulsar.ConsumerType.Exclusive,
    "failover": pulsar.ConsumerType.Failover,
}
_POSITIONS: dict[str, Any] = {
    "earliest": pulsar.InitialPosition.Earliest,
    "latest": pulsar.InitialPosition.Latest,
}
_R = _pulsar.Result
_CONNECTION_RESULTS = frozenset({
    _R.ConnectError, _R.NotConnected, _R.ReadError, _R.Timeout, _R.LookupError,
    _R.ServiceUnitNotReady, _R.TooManyLookupRequestException, _R.BrokerMetadataError,
    _R.BrokerPersistenceError, _R.Interrupted,
})
_AUTH_RESULTS = frozenset({
    _R.AuthenticationError, _R.AuthorizationError, _R.ErrorGettingAuthenticationData,
})

#: (service URL, native topic, subscription) -> [consumer type, consumers open]: the
#: consumers this process holds, so a busy exclusive subscription is refused here
#: (pulsar-lite drops the whole connection instead of answering ConsumerBusy).
_HELD: dict[tuple[str, str, str], list[Any]] = {}
_HELD_LOCK = threading.Lock()


_redact = redact_url


def _check_service_url(url: str) -> None:
    """Refuse a service URL the Pulsar client would choke on later, and say why.

    Pulsar takes ``pulsar://host:port[,host:port...]``; it has no place for a
    ``user:password@`` (credentials go in ``--pulsar-api-key``), so a URL with
    one is refused, and never quoted with the password in it.
    """
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if "@" in authority:
        raise ConfigurationError(
            f"--pulsar-host {shown(url)}: Pulsar service URLs carry no user or password; "
            "give a token with --pulsar-api-key (env PULSAR_API_KEY)"
        )
    for part in authority.split(","):
        name, sep, port = part.rpartition(":")
        if not sep:
            name, port = part, "6650"
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"--pulsar-host {shown(url)}: {shown(part)} is not host:port"
            )


def _qos(topic: str) -> str:
    """The qos a topic is used with: a Pulsar URI's scheme says q0 or q1."""
    if "://" in topic:
        return "q0" if topic.startswith("non-persistent://") else "q1"
    return naming.parse(topic).qos


_monotonic = time.monotonic


class _PulsarMessage(BaseMessage):
    """A received message whose properties are read from the client only when asked for
    (most handlers never look, and building the dict costs on every message)."""

    __slots__ = ()

    def properties(self) -> dict[str, str]:
        props = self._props
        if props is None:
            props = self._props = self.handle.properties()
        return props


class _LoopCallback:
    """Completes a future on its loop from whatever thread the client calls back on."""

    __slots__ = ("loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self.thread:
            fn(*args)
        else:
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _settle(fut: asyncio.Future[Any], error: Callable[[Any], BaseException], result: Any,
            value: Any = None) -> None:
    if fut.done():
        return
    if result == _R.Ok:
        fut.set_result(value)
    else:
        fut.set_exception(error(result))


def _resolve(fut: asyncio.Future[Any], result: Any) -> None:
    """Hand the client's result code itself to a waiting future."""
    if not fut.done():
        fut.set_result(result)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a shared future's exception as seen (its waiters may all have gone)."""
    if not fut.cancelled():
        fut.exception()


class PulsarProducer:
    """A producer on one topic; see the module docstring for how sends are pipelined
    and how a message the client refuses or gives up on is reported."""

    def __init__(
        self,
        backend: PulsarBackend,
        topic: str,
        native: str,
        schema: type[Any] | None,
        producer: Any,
        *,
        confirm: bool,
        max_payload: int | None,
        window: int,
        window_bytes: int,
        batch_bytes: int | None,
    ) -> None:
        self.topic = topic
        self.native = native
        self._backend = backend
        self._schema = schema
        self._producer = producer
        self._raw = producer._producer
        self._confirm = confirm
        self._max_payload = max_payload
        self._window = window
        self._window_bytes = window_bytes
        self._batch_bytes = batch_bytes  # None: batching off
        self._loop = asyncio.get_running_loop()
        self._cb = _LoopCallback(self._loop)
        self._sent = 0
        self._sent_bytes = 0
        self._flushed = 0
        self._flushed_bytes = 0
        #: pipelined messages not yet confirmed, oldest first (``_sent - _flushed`` of
        #: them): a failure hands them to ``Producer`` to send again.  Each is kept
        #: as the client's built message, whose payload the client holds at its
        #: exact size anyway; the encoder's bytes carry kilobytes of allocation
        #: slack (orjson), about 40 MB over a full window of 1 KiB messages.
        self._unconfirmed: deque[tuple[Any, dict[str, str] | None, str | None]] = deque()
        self._window_flush: asyncio.Future[None] | None = None
        self._error: PubSubError | None = None
        self._reported = False  # whether ``_error`` has reached the caller
        self._closed = False
        self._calls = 0
        # The watch: one background flush while sends are unconfirmed (see ``_watch``).
        self._watch_timer: asyncio.TimerHandle | None = None
        self._watching = False
        self._unwatched_at: float | None = None  # first send no issued flush covers
        self._send_timeout = backend.send_timeout_ms / 1000
        # Sizes up to this go without a callback (see ``send``); starts from what
        # this backend's broker has already confirmed.
        self._probe_upto = backend._proven_size
        self._in_send = False
        self._refused: Any = None  # a result the client called back with inside send_async
        #: a batched probe the client has not answered: no call into the producer meanwhile
        self._quiet: asyncio.Future[Any] | None = None

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"producer for {self.topic} is closed; create a new one")
        if self._error is not None:
            self._reported = True
            raise self._error

    def _failure(self, result: Any) -> BaseException:
        return self._backend._client_error(result, f"send to {self.topic}", after_connect=True)

    def _fail(self, result: Any, *, announce: bool) -> PubSubError:
        """Mark the producer failed by the client's ``result``; every later call raises it.

        The client fails pipelined messages without telling anyone but the
        callbacks it holds, so the error counts every message not yet
        confirmed as possibly lost.  ``announce`` logs it at once: for failures
        found in the background, which no caller may ask about for a while.
        """
        if self._error is None:
            lost = self._sent - self._flushed
            base = self._backend._client_error(result, f"send to {self.topic}", after_connect=True)
            self._error = type(base)(
                f"{base}; up to {lost} message(s) sent since the last confirmed flush may not "
                "have reached the broker"
            )
            self._error.unconfirmed = tuple(
                (msg.data(), props, key) for msg, props, key in self._unconfirmed
            )
            self._unconfirmed.clear()
            if self._watch_timer is not None:
                self._watch_timer.cancel()
                self._watch_timer = None
            if announce:
                log.warning("Pulsar producer for %s failed: %s", self.topic, self._error)
        return self._error

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        if self._closed or self._error is not None:
            self._check()
        data = encode_payload(self._schema, message, self.topic)
        props = check_properties(properties, self.topic) if properties else None
        size = len(data)
        if props or key is not None:
            size += sum(len(k.encode()) + len(v.encode()) + 8 for k, v in (props or {}).items())
            size += 0 if key is None else len(key.encode()) + 8
        if self._max_payload is not None and size > self._max_payload:
            raise MessageTooLargeError(
                f"message of {size} bytes (payload and properties) for {self.topic} exceeds "
                f"the {self._max_payload} bytes Pulsar accepts (broker maxMessageSize less "
                "16 KiB of metadata); create the producer with chunking=True, or raise "
                "--pulsar-max-message-size together with the broker's maxMessageSize"
            )
        builder = _pulsar.MessageBuilder()
        builder.content(data)
        if props:
            for k, v in props.items():
                builder.property(k, v)
        if key is not None:
            builder.partition_key(key)
        msg = builder.build()
        if self._confirm:
            fut: asyncio.Future[None] = self._loop.create_future()
            cb = self._cb
            self._raw.send_async(
                msg, lambda result, _id: cb.call(_settle, fut, self._failure, result)
            )
            await fut
            return
        # Take a slot in the window before the client gets the message: checked
        # after sending, concurrent senders could overrun the client's queue,
        # which refuses the excess (ProducerQueueIsFull) to callbacks nobody holds.
        while self._quiet is not None:
            await asyncio.shield(self._quiet)
        if self._closed or self._error is not None:
            self._check()
        while (
            self._sent - self._flushed >= self._window
            or self._sent_bytes - self._flushed_bytes >= self._window_bytes
        ):
            await self._flush_window()
            if self._closed or self._error is not None:
                self._check()
        self._sent += 1
        self._sent_bytes += size
        self._unconfirmed.append((msg, props, key))
        if size > self._probe_upto:
            self._probe_upto = max(self._probe_upto, self._backend._proven_size)
        if size > self._probe_upto:
            await self._probe(msg, size, len(data))
        else:
            # No callback: the client's rate drops about fivefold with one per
            # message.  What the client may still fail is caught by the window
            # flush, the watch, or (for a size the broker might refuse) a probe.
            self._raw.send_async(msg, None)
        if self._unwatched_at is None:
            self._note_unwatched()
        self._calls += 1
        if self._calls >= _YIELD_EVERY:
            self._calls = 0
            await asyncio.sleep(0)

    # -- finding out about failed sends without a callback per message --------

    async def _probe(self, msg: Any, size: int, length: int) -> None:
        """Send with a callback a message larger than any this broker has confirmed.

        The client refuses a message larger than the broker's own limit
        (MessageTooBig: the broker's maxMessageSize is below
        ``--pulsar-max-message-size``) to its callback alone, and later
        messages still succeed, so no flush would notice.  Sizes up to a
        confirmed one need no callback; the first message of each new largest
        size (one at a time per producer) gets one.

        The client refuses such a message before ``send_async`` returns.  When
        it travelled alone (batching off, or too big to share a batch) only it
        is lost: this send raises and the producer carries on.  Otherwise
        messages batched with it went too, and the producer fails.

        A batched probe is waited for, and nothing on this producer calls into
        the client until it is answered.  The client's own thread closes a
        batch holding the producer's mutex and then needs the GIL for the
        Python callback in it; a call such as ``send_async`` or
        ``flush_async`` made meanwhile from the loop holds the GIL while it
        waits for that mutex, and both threads would wait forever (seen as
        a hung ``flush``).  Probes are rare (a new largest size), so the wait
        of one batch delay costs little.
        """
        previous, self._probe_upto = self._probe_upto, size
        cb = self._cb
        answered: asyncio.Future[Any] = self._loop.create_future()

        def probed(result: Any) -> None:
            self._probed(result, size)
            _resolve(answered, result)

        self._in_send = True
        try:
            self._raw.send_async(msg, lambda result, _id: cb.call(probed, result))
        finally:
            self._in_send = False
        result, self._refused = self._refused, None
        if result is None:
            if self._batch_bytes is None or answered.done():
                return
            gate = self._quiet = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(answered), self._flush_bound())
                # The client's thread still drops its reference to the callback
                # (which takes the GIL too): let it, before anyone calls in.
                await asyncio.sleep(_RELEASE_PAUSE)
            except TimeoutError:
                log.warning("Pulsar gave no answer to a send to %s within %.0fs",
                            self.topic, self._flush_bound())
                raise self._fail(_R.Timeout, announce=False) from None
            finally:
                self._quiet = None
                gate.set_result(None)
            if self._error is not None:
                self._reported = True
                raise self._error
            return
        if self._batch_bytes is None or length >= self._batch_bytes:
            self._sent -= 1
            self._sent_bytes -= size
            self._unconfirmed.pop()
            self._probe_upto = previous
            raise self._backend._client_error(result, f"send to {self.topic}", after_connect=True)
        self._reported = True
        raise self._fail(result, announce=False)

    def _probed(self, result: Any, size: int) -> None:
        if result == _R.Ok:
            if size > self._backend._proven_size:
                self._backend._proven_size = size
        elif self._in_send:
            self._refused = result  # inline, inside ``_probe``: it decides
        elif not self._closed:
            self._fail(result, announce=True)

    def _note_unwatched(self) -> None:
        """The first send since the last watch flush was issued: make sure one follows."""
        self._unwatched_at = self._loop.time()
        if not self._watching and self._watch_timer is None:
            self._watch_timer = self._loop.call_later(WATCH_DELAY, self._watch)

    def _watch(self) -> None:
        """Issue the background flush that watches pipelined sends.

        The client fails every pending message at once when the oldest
        outlives ``send_timeout_ms`` (or when the broker refuses the producer
        on a reconnect), reporting it only to callbacks; a flush issued later
        finds an empty queue and succeeds.  So while messages are unconfirmed
        one flush is kept attached to the newest: its failure is theirs.  It
        is issued ``WATCH_DELAY`` after the first unwatched send, which keeps
        batches whole and costs one callback per interval, not per message.
        """
        self._watch_timer = None
        if self._closed or self._error is not None or self._watching:
            return
        if self._quiet is not None:  # see _probe: no client call until it is answered
            self._watch_timer = self._loop.call_later(WATCH_DELAY, self._watch)
            return
        if self._sent == self._flushed:
            self._unwatched_at = None
            return
        mark, mark_bytes = self._sent, self._sent_bytes
        self._watching = True
        self._unwatched_at = None
        cb = self._cb
        self._raw.flush_async(lambda result: cb.call(self._watched, result, mark, mark_bytes))

    def _watched(self, result: Any, mark: int, mark_bytes: int) -> None:
        self._watching = False
        if self._closed:
            return
        if result != _R.Ok:
            self._fail(result, announce=True)
            return
        self._confirmed(mark, mark_bytes)
        if self._unwatched_at is not None and self._error is None:
            # Sends arrived meanwhile: watch them too, well before the oldest can time out.
            delay = WATCH_DELAY
            if self._send_timeout > 0:
                due = self._unwatched_at + self._send_timeout / 2 - self._loop.time()
                delay = max(0.0, min(delay, due))
            self._watch_timer = self._loop.call_later(delay, self._watch)

    def _confirmed(self, mark: int, mark_bytes: int) -> None:
        if mark > self._flushed:
            done = self._unconfirmed.popleft
            for _ in range(min(mark - self._flushed, len(self._unconfirmed))):
                done()
            self._flushed = mark
            self._flushed_bytes = mark_bytes

    # -- flushing -------------------------------------------------------------

    async def _flush_window(self) -> None:
        """One flush for every sender that found the window full."""
        if self._window_flush is None:
            self._window_flush = asyncio.ensure_future(self._flush())
            # Its error is also kept in ``_error``: waiters that were cancelled
            # must not leave it unretrieved.
            self._window_flush.add_done_callback(_retrieve)
        fut = self._window_flush
        try:
            await asyncio.shield(fut)
        finally:
            if self._window_flush is fut and fut.done():
                self._window_flush = None

    async def _flush(self) -> None:
        """Flush the client; on success every message sent before it is confirmed."""
        while self._quiet is not None:  # see _probe
            await asyncio.shield(self._quiet)
        mark, mark_bytes = self._sent, self._sent_bytes
        fut: asyncio.Future[Any] = self._loop.create_future()
        cb = self._cb
        self._raw.flush_async(lambda result: cb.call(_resolve, fut, result))
        bound = self._flush_bound()
        try:
            result = await asyncio.wait_for(fut, bound)
        except TimeoutError:
            # Every message the flush covers has outlived its send timeout,
            # yet the client never answered: count them as not confirmed
            # rather than wait forever (seen once under heavy load).
            log.warning("Pulsar gave no answer to a flush for %s within %.0fs", self.topic, bound)
            result = _R.Timeout
        if result != _R.Ok:
            self._reported = True
            raise self._fail(result, announce=False)
        if self._error is not None:  # a probe failed while the flush was under way
            self._check()
        self._confirmed(mark, mark_bytes)

    def _flush_bound(self) -> float | None:
        """How long a flush may wait for the client: past every covered send's timeout."""
        if self._send_timeout <= 0:
            return None  # sends never time out, so neither does a flush
        return 2 * self._send_timeout + self._backend.operation_timeout + 5

    async def flush(self) -> None:
        """Wait until the broker confirmed every message sent so far."""
        self._check()
        if self._sent == self._flushed:
            return
        await self._flush()

    async def close(self) -> None:
        """Flush, then close the producer.  Idempotent.

        A failed flush, or a failure found in the background that no call has
        raised yet, is raised after closing: messages may have been lost.
        """
        if self._closed:
            return
        flush_error: BaseException | None = None
        if self._error is None:
            try:
                await self.flush()
            except PubSubError as exc:
                flush_error = exc
        elif not self._reported:
            flush_error = self._error
        self._closed = True
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        self._backend._producers.discard(self)
        try:
            await asyncio.wait_for(self._producer.close(), self._backend.operation_timeout + 5)
        except Exception as exc:
            log.debug("closing producer for %s: %r", self.topic, exc)
        if flush_error is not None:
            self._reported = True
            raise flush_error

    def __repr__(self) -> str:
        return (
            f"<PulsarProducer topic={self.topic!r} native={self.native!r} "
            f"in_flight={self._sent - self._flushed} closed={self._closed}>"
        )


class PulsarConsumer:
    """A consumer on one subscription; receive, ack and nack never block the loop."""

    def __init__(
        self,
        backend: PulsarBackend,
        topic: str,
        native: str,
        subscription: str,
        schema: type[Any] | None,
        consumer: Any,
        held: tuple[str, str, str],
        ephemeral: bool = False,
    ) -> None:
        self.topic = topic
        #: close() unsubscribes (see "Ephemeral subscriptions" in the module docstring)
        self._ephemeral = ephemeral
        self.native = native
        self.subscription = subscription
        self._backend = backend
        self._schema = schema
        self._consumer = consumer
        self._raw = consumer._consumer
        self._held = held
        self._loop = asyncio.get_running_loop()
        self._cb = _LoopCallback(self._loop)
        #: the client's receive callback: ``_deliver`` on the loop, inline when the
        #: client answers on the loop's own thread.
        self._on_receive = functools.partial(self._cb.call, self._deliver)
        self._buffer: deque[Any] = deque()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._pending = False
        self._pumping = False
        self._error: BaseException | None = None
        self._closed = False
        self._calls = 0
        self._last_ack = 0.0
        #: the client's receiver queue holds messages (see ``receive``)
        self._backlog = False
        #: a ``receive_async`` call is in progress on this thread
        self._inline = False

    # -- receiving ----------------------------------------------------------

    def _deliver(self, result: Any, msg: Any) -> None:
        self._pending = False
        if self._inline and result == _R.Ok:
            # The client had it queued already: more are likely there too.
            self._backlog = True
        if result != _R.Ok:
            if self._closed:
                return
            err = self._backend._client_error(
                result, f"receive from {self.topic} (subscription {self.subscription!r})",
                after_connect=True,
            )
            self._error = err
            while self._waiters:
                w = self._waiters.popleft()
                if not w.done():
                    w.set_exception(err)
            return
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(msg)
                if waiters:
                    self._pump()
                return
        self._buffer.append(msg)

    def _pump(self) -> None:
        """Keep one ``receive_async`` outstanding while someone waits."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while (
                not self._pending
                and not self._closed
                and self._error is None
                and any(not w.done() for w in self._waiters)
            ):
                self._pending = True
                self._inline = True
                try:
                    self._raw.receive_async(self._on_receive)
                finally:
                    self._inline = False
        finally:
            self._pumping = False

    def _message(self, raw: Any) -> BaseMessage:
        return _PulsarMessage(raw.data(), None, self.topic, self._schema, raw.redelivery_count(), raw)

    async def receive(self, timeout: float | None = None) -> BaseMessage:  # noqa: ASYNC109 (contract)
        if not self._buffer and not self._waiters and not self._pending:
            self._check()
            if self._backlog:
                # A backlog: take the next message straight from the client's
                # receiver queue.  ``receive(0)`` never waits, and costs a
                # fraction of a callback round; on an empty queue it raises
                # (tens of microseconds), so it is tried only while messages
                # are known to be queued.
                try:
                    raw = self._raw.receive(0)
                except _pulsar.PulsarException:
                    self._backlog = False  # drained (or failing: the async path says why)
                else:
                    self._calls += 1
                    if self._calls >= _YIELD_EVERY:
                        self._calls = 0
                        self._buffer.append(raw)  # held here, not lost, if cancelled now
                        await asyncio.sleep(0)
                        if not self._buffer:
                            return await self.receive(timeout)
                        raw = self._buffer.popleft()
                    return self._message(raw)
            # Ask the client; a message it already holds comes back inline.
            self._pending = True
            self._inline = True
            try:
                self._raw.receive_async(self._on_receive)
            finally:
                self._inline = False
        if self._buffer:
            self._calls += 1
            if self._calls >= _YIELD_EVERY:
                self._calls = 0
                await asyncio.sleep(0)
            if self._buffer:  # (another task may have taken it while we yielded)
                return self._message(self._buffer.popleft())
        self._check()
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.append(fut)
        self._pump()
        timer = None
        if timeout is not None and not fut.done():
            timer = self._loop.call_later(timeout, self._expire, fut, timeout)
        try:
            raw = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._buffer.appendleft(fut.result())  # handed over as we were cancelled
            raise
        finally:
            if timer is not None:
                timer.cancel()
            # Usually already taken by the dispatcher; test before removing (a
            # failed deque.remove formats the repr of the future and its message).
            if fut in self._waiters:
                self._waiters.remove(fut)
        return self._message(raw)

    def _expire(self, fut: asyncio.Future[Any], timeout: float) -> None:
        if not fut.done():
            fut.set_exception(
                PubSubTimeoutError(
                    f"no message on {self.topic} (subscription {self.subscription!r}) "
                    f"within {timeout}s"
                )
            )

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(
                f"consumer on {self.topic} (subscription {self.subscription!r}) is closed"
            )
        if self._error is not None:
            raise self._error

    # -- settling -----------------------------------------------------------

    def _handle(self, message: Any) -> Any:
        handle = getattr(message, "handle", None)
        if not isinstance(handle, _pulsar.Message):
            raise TypeError(
                f"consumer on {self.topic} can only acknowledge messages it received, "
                f"got {type(message).__name__}"
            )
        return handle

    async def acknowledge(self, message: Any) -> None:
        """Acknowledge this message only; the client sends acks grouped, in the background."""
        if self._closed or self._error is not None:
            self._check()
        # No callback: a failed ack only means a redelivery (at-least-once), and a
        # Python callback per ack costs a GIL hand-over per message.
        try:
            self._raw.acknowledge_async(message.handle, None)
        except (AttributeError, TypeError):
            self._handle(message)  # raises the TypeError that names the problem
            raise
        self._last_ack = _monotonic()
        self._calls += 1
        if self._calls >= _YIELD_EVERY:
            self._calls = 0
            await asyncio.sleep(0)

    async def negative_acknowledge(self, message: Any) -> None:
        """Redeliver this message after the backend's ``nack_delay_ms``."""
        handle = self._handle(message)
        self._check()
        self._raw.negative_acknowledge_async(handle, None)
        await asyncio.sleep(0)

    # -- ending -------------------------------------------------------------

    def _end(self, error: BaseException) -> None:
        self._closed = True
        self._backend._consumers.discard(self)
        self._backend._release(self._held)
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(error)
        self._buffer.clear()  # unacked: the broker redelivers them

    async def unsubscribe(self) -> None:
        """Delete the durable subscription and its backlog, then close."""
        self._check()
        # The client sends acks grouped, every 100 ms, and does not flush them before
        # unsubscribing: acks arriving after it name a consumer the broker has removed
        # (pulsar-lite answers that by dropping the connection).  Let them go first.
        wait = self._last_ack + ACK_FLUSH - _monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        loop = self._loop
        fut: asyncio.Future[None] = loop.create_future()
        self._raw.unsubscribe_async(
            lambda result: self._cb.call(
                _settle, fut,
                lambda r: self._backend._client_error(
                    r, f"unsubscribe {self.subscription!r} from {self.topic}", after_connect=True
                ),
                result,
            )
        )
        try:
            await asyncio.wait_for(fut, self._backend.operation_timeout + 5)
        except TimeoutError as exc:
            raise ConnectionLostError(
                f"Pulsar did not confirm unsubscribing {self.subscription!r} from {self.topic} "
                f"within {self._backend.operation_timeout + 5}s"
            ) from exc
        # Unsubscribing closed the consumer in the client too.  A close on top would
        # flush grouped acks for a consumer the broker no longer knows (pulsar-lite
        # then drops the whole connection).
        self._end(ClosedError(f"consumer on {self.topic} unsubscribed"))

    async def close(self) -> None:
        """Close; the subscription and its unacked messages stay on the broker.  Idempotent.

        An ephemeral subscription is unsubscribed instead, best effort.
        """
        if self._closed:
            return
        if self._ephemeral and self._error is None:
            try:
                await self.unsubscribe()
                return
            except Exception as exc:
                log.debug("unsubscribing ephemeral %r from %s on close: %r",
                          self.subscription, self.topic, exc)
            if self._closed:
                return
        self._end(ClosedError(f"consumer on {self.topic} is closed"))
        try:
            await asyncio.wait_for(self._consumer.close(), self._backend.operation_timeout + 5)
        except Exception as exc:
            log.debug("closing consumer on %s: %r", self.topic, exc)

    def __aiter__(self) -> AsyncIterator[Message]:
        return iterate_messages(self)

    def __repr__(self) -> str:
        return (
            f"<PulsarConsumer topic={self.topic!r} native={self.native!r} "
            f"subscription={self.subscription!r} closed={self._closed}>"
        )


class PulsarBackend:
    """Pulsar through ``pulsar-client``; options as in ``factory.BACKEND_OPTIONS['pulsar']``."""

    name = "pulsar"

    def __init__(
        self,
        host: str = "pulsar://localhost:6650",
        api_key: str | None = None,
        listener: str | None = None,
        admin_url: str | None = None,
        nack_delay_ms: int = 1000,
        operation_timeout: int = 10,
        send_timeout_ms: int = 30000,
        max_message_size: int = 5 * 1024 * 1024,
    ) -> None:
        if not isinstance(host, str) or not host.startswith(("pulsar://", "pulsar+ssl://")):
            raise ConfigurationError(
                f"--pulsar-host {shown(str(host))} is not a Pulsar service URL "
                "(expected pulsar://host:6650 or pulsar+ssl://host:6651)"
            )
        _check_service_url(host)
        if admin_url is not None and not admin_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"--pulsar-admin-url {shown(admin_url)} is not an HTTP URL "
                "(expected http://host:8080)"
            )
        for flag, value, low in (
            ("--pulsar-nack-delay-ms", nack_delay_ms, 0),
            ("--pulsar-operation-timeout", operation_timeout, 1),
            ("--pulsar-send-timeout-ms", send_timeout_ms, 0),
            ("--pulsar-max-message-size", max_message_size, METADATA_RESERVE + 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigurationError(f"{flag} must be an integer >= {low}, got {shown(value)}")
        self.host = host
        self.listener = listener
        self.admin_url = admin_url.rstrip("/") if admin_url else None
        self.nack_delay_ms = nack_delay_ms
        self.operation_timeout = operation_timeout
        self.send_timeout_ms = send_timeout_ms
        self.max_payload = max_message_size - METADATA_RESERVE
        self.__api_key = api_key
        self.capabilities = Capabilities(
            persistent=True,
            replay_from_earliest=True,
            native_nack=True,
            ordering=True,
            consumer_groups=True,
            max_message_size=self.max_payload,
            queue_lifecycle=self.admin_url is not None,
            redelivery_count=True,
            consumer_types=frozenset(_CONSUMER_TYPES),
            exactly_once=False,
        )
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._producers: set[PulsarProducer] = set()
        self._consumers: set[PulsarConsumer] = set()
        self._closed = False
        #: the largest message (bytes, properties included) the broker has confirmed:
        #: producers send messages up to it without a callback (``PulsarProducer._probe``).
        self._proven_size = 0

    # -- the client ---------------------------------------------------------

    def _make_client(self) -> Any:
        auth = pulsar.AuthenticationToken(self.__api_key) if self.__api_key else None
        try:
            return pulsar_asyncio.Client(
                self.host,
                authentication=auth,
                operation_timeout_seconds=self.operation_timeout,
                connection_timeout_ms=min(10_000, self.operation_timeout * 1000),
                listener_name=self.listener or None,
                logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
            )
        except Exception as exc:
            raise ConfigurationError(
                f"--pulsar-host {_redact(self.host)!r}: the Pulsar client refused it "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    async def _get_client(self) -> Any:
        if self._closed:
            raise ClosedError("Pulsar backend is closed; create a new one with get_pubsub()")
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await asyncio.to_thread(self._make_client)
        return self._client

    def _client_error(self, result: Any, what: str, *, after_connect: bool,
                      probe: str = "") -> PubSubError:
        """The SDK exception for a client result code; never mentions the token."""
        name = getattr(result, "name", str(result))
        where = _redact(self.host)
        if result in _AUTH_RESULTS:
            return AuthenticationError(
                f"Pulsar at {where} rejected the credentials ({name}) on {what}: "
                "check --pulsar-api-key (the token) and its permissions"
            )
        if result == _R.MessageTooBig:
            return MessageTooLargeError(
                f"{what}: Pulsar refused the message as too big ({name}): the broker's "
                "maxMessageSize is below --pulsar-max-message-size; lower that option to the "
                "broker's limit, or create the producer with chunking=True"
            )
        if result == _R.InvalidTopicName:
            return BadTopicError(f"{what}: Pulsar refused the topic name ({name})")
        if result in (_R.TopicNotFound, _R.SubscriptionNotFound):
            return QueueNotFoundError(f"{what}: {name} on Pulsar at {where}")
        if result in (_R.AlreadyClosed, _R.ConsumerNotInitialized, _R.ProducerNotInitialized):
            if after_connect:
                return ConnectionLostError(
                    f"{what}: the Pulsar client closed it ({name}); recreate it"
                )
            return ClosedError(f"{what}: the Pulsar client is closed ({name})")
        if result in (_R.ConsumerBusy, _R.ProducerBusy, _R.ProducerFenced):
            return PubSubError(
                f"{what}: Pulsar says the subscription or topic is busy ({name}): an exclusive "
                "consumer or producer already holds it"
            )
        if result == _R.TopicTerminated:
            return PubSubError(
                f"{what}: the topic is terminated on Pulsar at {where} ({name}) and accepts no "
                "more messages; publish to another topic"
            )
        if result in _CONNECTION_RESULTS:
            if after_connect:
                return ConnectionLostError(f"{what}: lost Pulsar at {where} ({name})")
            found = f"; {probe}" if probe else ""
            return BrokerConnectionError(
                f"could not reach Pulsar at {where} to {what} within "
                f"{self.operation_timeout}s ({name}{found}): is the broker running and "
                "--pulsar-host right?"
            )
        return PubSubError(f"{what}: Pulsar answered {name}")

    async def _probe(self) -> str:
        """What a plain TCP connection to the service address finds (for error messages)."""
        parts = urllib.parse.urlsplit(self.host.split(",")[0])
        host = parts.hostname or "localhost"
        port = parts.port or (6651 if parts.scheme == "pulsar+ssl" else 6650)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
        except ConnectionRefusedError:
            return f"connection to {host}:{port} refused"
        except (TimeoutError, OSError) as exc:
            return f"TCP connect to {host}:{port} failed: {exc or type(exc).__name__}"
        writer.close()
        return f"{host}:{port} accepts TCP connections but the Pulsar handshake did not complete"

    async def _create(self, what: str, make: Callable[[], Any]) -> Any:
        """Run a client create call; map its failure to the SDK's exception."""
        try:
            return await make()
        except pulsar_asyncio.PulsarException as exc:
            result = exc.error()
            probe = ""
            if result in _CONNECTION_RESULTS:
                probe = await self._probe()
            raise self._client_error(result, what, after_connect=False, probe=probe) from exc

    # -- producers ------------------------------------------------------------

    async def create_producer(
        self, topic: str, schema: type[Any] | None, **opts: Any
    ) -> PulsarProducer:
        """Open a producer.  ``opts``: ``latency_bound`` (bool), ``chunking`` (bool);
        others are ignored."""
        native = naming.pulsar_topic(topic)
        qos = _qos(topic)
        latency_bound = bool(opts.get("latency_bound", False))
        chunking = bool(opts.get("chunking", False))
        confirm = qos == "q2"
        batching = not (latency_bound or chunking or confirm)
        batch_bytes = min(BATCH_BYTES, self.max_payload)
        client = await self._get_client()
        producer = await self._create(
            f"create a producer for {topic}",
            lambda: client.create_producer(
                native,
                send_timeout_millis=self.send_timeout_ms,
                max_pending_messages=WINDOW + 1000,
                block_if_queue_full=False,
                batching_enabled=batching,
                batching_max_allowed_size_in_bytes=batch_bytes,
                chunking_enabled=chunking,
            ),
        )
        p = PulsarProducer(
            self, topic, native, schema, producer,
            confirm=confirm,
            max_payload=None if chunking else self.max_payload,
            window=WINDOW,
            window_bytes=WINDOW_BYTES,
            batch_bytes=batch_bytes if batching else None,
        )
        if self._closed:
            await p.close()
            raise ClosedError("Pulsar backend was closed while a producer was created")
        self._producers.add(p)
        return p

    # -- consumers ------------------------------------------------------------

    def _hold(self, key: tuple[str, str, str], consumer_type: str, topic: str) -> None:
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is not None and held[1] > 0:
                if held[0] == "exclusive" or consumer_type == "exclusive":
                    raise PubSubError(
                        f"subscription {key[2]!r} on topic {topic!r} already has "
                        f"{'an exclusive' if held[0] == 'exclusive' else 'a ' + held[0]} consumer "
                        "in this process (Pulsar ConsumerBusy); close it first, or use another "
                        "subscription name or consumer_type='shared'/'failover'"
                    )
                if held[0] != consumer_type:
                    raise PubSubError(
                        f"subscription {key[2]!r} on topic {topic!r} has {held[0]} consumers; "
                        f"a {consumer_type} consumer cannot join (use the same consumer_type "
                        "or another subscription)"
                    )
                held[1] += 1
            else:
                _HELD[key] = [consumer_type, 1]

    def _release(self, key: tuple[str, str, str]) -> None:
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is not None:
                held[1] -= 1
                if held[1] <= 0:
                    del _HELD[key]

    async def create_consumer(
        self,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        initial_position: InitialPosition = "latest",
        consumer_type: ConsumerType = "shared",
        **opts: Any,
    ) -> PulsarConsumer:
        """Subscribe.  ``opts``: ``prefetch`` (int, the client's receiver queue,
        default 1000); ``ephemeral`` (bool: ``close`` unsubscribes, see the
        module docstring); others are ignored."""
        native = naming.pulsar_topic(topic)
        naming.check_subscription(subscription, topic)
        if initial_position not in _POSITIONS:
            raise ConfigurationError(
                f"initial_position {shown(initial_position)} for {topic}: expected 'earliest' or 'latest'"
            )
        if consumer_type not in _CONSUMER_TYPES:
            raise ConfigurationError(
                f"consumer_type {shown(consumer_type)} for {topic}: expected one of "
                f"{', '.join(sorted(_CONSUMER_TYPES))}"
            )
        prefetch = opts.get("prefetch")
        queue = 1000 if prefetch is None else int(prefetch)
        if queue < 1:
            raise ConfigurationError(f"prefetch for {topic} must be >= 1, got {shown(prefetch)}")
        client = await self._get_client()
        key = (self.host, native, subscription)
        self._hold(key, consumer_type, topic)
        try:
            consumer = await self._create(
                f"subscribe {subscription!r} to {topic}",
                lambda: client.subscribe(
                    native,
                    subscription,
                    consumer_type=_CONSUMER_TYPES[consumer_type],
                    receiver_queue_size=queue,
                    negative_ack_redelivery_delay_ms=self.nack_delay_ms,
                    initial_position=_POSITIONS[initial_position],
                ),
            )
        except BaseException:
            self._release(key)
            raise
        c = PulsarConsumer(
            self, topic, native, subscription, schema, consumer, key, bool(opts.get("ephemeral"))
        )
        if self._closed:
            await c.close()
            raise ClosedError("Pulsar backend was closed while a consumer was created")
        self._consumers.add(c)
        return c

    # -- queue lifecycle --------------------------------------------------------

    async def _admin(self, method: str, path: str, what: str) -> tuple[int, bytes]:
        """One admin REST call in a worker thread: ``(status, body)``; transport errors raised."""
        assert self.admin_url is not None
        url = f"{self.admin_url}/admin/v2/{path}"
        headers = {"Accept": "application/json"}
        if self.__api_key:
            headers["Authorization"] = f"Bearer {self.__api_key}"
        request = urllib.request.Request(url, method=method, headers=headers)
        timeout = self.operation_timeout

        def call() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    return int(resp.status), bytes(resp.read())
            except urllib.error.HTTPError as exc:
                return int(exc.code), bytes(exc.read() or b"")

        try:
            status, payload = await asyncio.to_thread(call)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # HTTPException: something answered, but not HTTP (a wrong port, a
            # proxy that cut the connection, a truncated body).
            reason = getattr(exc, "reason", None) or repr(exc)
            raise BrokerConnectionError(
                f"could not reach the Pulsar admin API at {_redact(self.admin_url)} to {what} "
                f"({reason}): is --pulsar-admin-url right?"
            ) from exc
        if status in (401, 403):
            raise AuthenticationError(
                f"the Pulsar admin API at {_redact(self.admin_url)} refused to {what} "
                f"(HTTP {status}): check --pulsar-api-key and its admin permissions"
            )
        return status, payload

    def _admin_failed(self, what: str, status: int, payload: bytes) -> PubSubError:
        text = payload.decode("utf-8", "replace")[:300]
        return PubSubError(
            f"the Pulsar admin API at {_redact(self.admin_url)} could not {what}: HTTP {status} {text}"
        )

    async def _subscribe_once(self, topic: str, subscription: str, unsubscribe: bool) -> None:
        """Make (and keep, or delete) a durable subscription through the binary protocol."""
        c = await self.create_consumer(topic, subscription, None, "latest", "shared", prefetch=1)
        if unsubscribe:
            await c.unsubscribe()
        else:
            await c.close()

    def _held_here(self, topic: str, subscription: str) -> bool:
        with _HELD_LOCK:
            held = _HELD.get((self.host, naming.pulsar_topic(topic), subscription))
            return held is not None and held[1] > 0

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Create the topic and its durable subscription (from the latest message).

        Idempotent: an existing topic or subscription is left as it is.  Without
        an admin URL the subscription is made by subscribing and closing.
        """
        path = naming.pulsar_admin_path(topic)
        sub_path = naming.pulsar_admin_path(topic, subscription)
        if self._closed:
            raise ClosedError("Pulsar backend is closed; create a new one with get_pubsub()")
        if self.admin_url is None:
            if _qos(topic) != "q0" and not self._held_here(topic, subscription):
                await self._subscribe_once(topic, subscription, unsubscribe=False)
            return
        what = f"create topic {topic}"
        status, payload = await self._admin("PUT", path, what)
        if status not in (200, 204, 409):
            raise self._admin_failed(what, status, payload)
        if _qos(topic) == "q0":
            return  # a non-persistent subscription lives only while a consumer is attached
        what = f"create subscription {subscription!r} on {topic}"
        status, payload = await self._admin("PUT", sub_path, what)
        if status not in (200, 204, 409):
            raise self._admin_failed(what, status, payload)

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        """Create the queue if it is missing; idempotent (``create_queue`` already is)."""
        await self.create_queue(topic, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        """Whether the subscription exists on the topic; needs the admin API.

        Without ``admin_url`` this raises ``UnsupportedError``: Pulsar's binary
        protocol cannot tell, and guessing would claim a queue that may not exist.
        """
        path = naming.pulsar_admin_path(topic)
        naming.check_subscription(subscription, topic)
        if self.admin_url is None:
            raise UnsupportedError(
                f"cannot tell whether subscription {subscription!r} on {topic} exists without "
                "the Pulsar admin API: set --pulsar-admin-url (Capabilities.queue_lifecycle is False)"
            )
        what = f"list the subscriptions of {topic}"
        status, payload = await self._admin("GET", f"{path}/subscriptions", what)
        if status == 404:
            return False
        if status != 200:
            raise self._admin_failed(what, status, payload)
        try:
            subs = json.loads(payload)
        except ValueError as exc:
            raise self._admin_failed(what, status, payload) from exc
        return subscription in subs

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """Delete the subscription and its backlog, or with ``subscription=None`` the
        topic and every subscription on it.  Missing ones are not an error.

        Without an admin URL a subscription is deleted by subscribing and
        unsubscribing; a whole topic cannot be (its subscriptions cannot be
        listed), so that call does nothing.
        """
        path = naming.pulsar_admin_path(topic, subscription)
        if self._closed:
            raise ClosedError("Pulsar backend is closed; create a new one with get_pubsub()")
        if self.admin_url is None:
            if subscription is None:
                log.debug("delete_queue(%s): no admin URL, topic deletion skipped", topic)
            elif _qos(topic) != "q0":
                await self._subscribe_once(topic, subscription, unsubscribe=True)
            return
        what = f"delete {'topic ' + topic if subscription is None else repr(subscription) + ' on ' + topic}"
        status, payload = await self._admin("DELETE", f"{path}?force=true", what)
        if status not in (200, 204, 404):
            raise self._admin_failed(what, status, payload)

    # -- the backend ------------------------------------------------------------

    async def close(self) -> None:
        """Close every producer (flushed) and consumer, then the client.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        results = await asyncio.gather(
            *(p.close() for p in list(self._producers)),
            *(c.close() for c in list(self._consumers)),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                log.warning("closing the Pulsar backend: %r", r)
        async with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), self.operation_timeout + 5)
            except Exception as exc:
                log.debug("closing the Pulsar client: %r", exc)

    def __repr__(self) -> str:
        auth = " auth=token" if self.__api_key else ""
        listener = f" listener={self.listener!r}" if self.listener else ""
        admin = f" admin_url={_redact(self.admin_url)!r}" if self.admin_url else ""
        return f"<PulsarBackend host={_redact(self.host)!r}{listener}{admin}{auth}>"
