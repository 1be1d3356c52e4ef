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
  - a message larger than any the broker has confirmed (and, with batching,
    larger than a batch) is a *probe*, sent with a callback: the client
    refuses one above the broker's own limit
    (``MessageTooBig``, when ``--pulsar-max-message-size`` exceeds it), which
    that send raises as ``MessageTooLargeError``;
  - while messages are unconfirmed, one background flush is attached to the
    newest (the *watch*, ``WATCH_DELAY`` after the first): the client fails
    every pending message together when the oldest outlives
    ``send_timeout_ms``, and a flush issued afterwards would succeed.

  Until the broker confirms a message it is kept, to be handed back if the
  client gives up on it.  Confirmations are read without a callback: the
  client numbers messages in send order and ``last_sequence_id()`` gives the
  newest one the broker confirmed, read every ``_YIELD_EVERY`` sends, when the
  window is full and by the watch.  A failure heard by the watch (or a probe)
  stops that reading, since the client numbers later messages past the
  failed ones.

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
* **TLS** is on with a ``pulsar+ssl://`` host (``tls_*`` files with
  ``pulsar://`` are refused).  The C++ client takes file paths: ``tls_ca_file``
  (else the system's bundle, not certifi's), ``tls_verify_hostname``, never an
  insecure connection; a client certificate goes in ``AuthenticationTLS``
  (handshake and Pulsar TLS authentication, so not beside ``api_key``).  The
  files are loaded once by ``tls.client_context`` at construction (a bad one
  names its flag), and that context serves an ``https`` admin URL.  The client
  reports a failed handshake only as ``ConnectError``/``Timeout``;
  ``tls_probe`` finds out which certificate failed, for the error.
* **A stalled link** (open, silent) is noticed by the client's keep-alive,
  fixed at 30 s (pulsar-client 3.13's Python API does not set it): 30 to 60 s.
* **The client's own log** (C++) goes to its console logger (standard
  output) at WARN and above, not to ``logging``: with a Python logger the client calls into Python for
  every line it produces, debug lines for every message included, which
  halves the send rate (measured) and has deadlocked at interpreter exit in
  past client versions.

Layout (the same modules in every broker backend package):

* ``config``: tuning knobs, the consumer-type and position tables, checks of
  the options, URLs shown with secrets redacted.
* ``connection``: making the client, callbacks from its threads into the
  event loop, the TCP and TLS probes behind a failed connect, and the
  consumers this process holds on each subscription.
* ``errors``: the client's result codes as the SDK's errors.
* ``producer``: ``PulsarProducer``.
* ``consumer``: ``PulsarConsumer`` and its received message.
* ``lifecycle``: ``PulsarQueues``, the queue lifecycle the backend delegates to.
* this module: ``PulsarBackend`` and its ``Capabilities``, and the names
  other code imports from ``trustgraph_pubsub.backends.pulsar``.

Private internals of pulsar-client relied on (tested with pulsar-client
3.13.0; checked without a broker by ``tests/unit/test_client_internals.py``;
``pyproject.toml`` keeps the client to the minor versions that passed):

* ``_pulsar``, the C extension module (``errors``, ``producer``,
  ``consumer``): the hot paths call it directly, skipping ``pulsar.asyncio``'s
  future and wrapper per call.
* ``_pulsar.Result`` (``_R``, ``errors``): the client's result codes, mapped to
  the SDK's errors; ``_R.Ok`` is tested in ``connection``, ``producer`` and
  ``consumer``.
* ``_pulsar.MessageBuilder`` (``content``, ``property``, ``partition_key``,
  ``build``; ``producer``): each message is built here rather than by
  ``Producer.send``.
* ``_pulsar.Message`` (``data``, ``properties``, ``redelivery_count``;
  ``consumer``): what ``receive_async`` delivers, kept as the message's ack
  handle (``isinstance`` tells a received message from anything else).
* ``_pulsar.PulsarException`` (``consumer``): what the C++ consumer's
  ``receive(0)`` raises on an empty receiver queue.
* ``pulsar.asyncio.Producer._producer`` (``producer``): the C++ producer, for
  ``send_async`` and ``flush_async`` with this package's own callbacks (or
  none), and ``last_sequence_id``.
* ``_pulsar.Result(46)`` (``errors._DISCONNECTED``): the C++ client's
  ResultDisconnected, which the binding does not name; mapped to a lost
  connection.
* ``pulsar.asyncio.Consumer._consumer`` (``consumer``): the C++ consumer, for
  ``receive_async``, ``receive(0)``, ``acknowledge_async``,
  ``negative_acknowledge_async`` (pulsar-client 3.10 and later) and
  ``unsubscribe_async``.
* Undocumented behaviour of those C++ calls: the client calls back on its own
  threads, or inline on the calling thread when it can answer at once
  (``connection._LoopCallback``; ``consumer`` counts inline answers as a
  backlog); it refuses a message above the broker's limit (``MessageTooBig``)
  inside ``send_async`` (``PulsarProducer._probe``), before it numbers it;
  it numbers the messages it accepts one by one in send order, and
  ``last_sequence_id`` is the newest the broker confirmed
  (``PulsarProducer._poll``); and it closes a batch
  holding the producer's mutex while the Python callback in it needs the GIL
  (why ``_probe`` keeps every call out of a producer until a batched probe
  is answered).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import pulsar.asyncio as pulsar_asyncio

from ... import naming
from ...backend import Capabilities, ConsumerType, InitialPosition
from ...errors import BrokerConnectionError, ClosedError, ConfigurationError, PubSubError
from ...redact import shown
from ...tls import client_context
from .config import (
    _CONSUMER_TYPES,
    _POSITIONS,
    BATCH_BYTES,
    METADATA_RESERVE,
    WINDOW,
    WINDOW_BYTES,
    TlsSettings,
    _check_settings,
    _check_tls,
    _qos,
    _redact,
)
from .connection import _hold, _make_client, _probe, _release, _tls_problem
from .consumer import PulsarConsumer
from .errors import _CONNECTION_RESULTS, _client_error
from .errors import _R as _R
from .lifecycle import PulsarQueues
from .producer import PulsarProducer

log = logging.getLogger(__name__)


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
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_verify_hostname: bool = True,
    ) -> None:
        _check_settings(
            host, admin_url, nack_delay_ms, operation_timeout, send_timeout_ms, max_message_size
        )
        self._tls = TlsSettings(tls_ca_file or None, tls_cert_file or None, tls_key_file or None,
                                bool(tls_verify_hostname))
        _check_tls(host, self._tls, bool(api_key))
        self._ssl: ssl.SSLContext | None = None
        if any(self._tls.files().values()):
            # Load the files now, so a bad one fails here naming its flag.  (The system's
            # authorities alone are loaded in a worker thread when first needed.)
            self._ssl = self._ssl_context()
        self.host = host
        self.listener = listener
        self.admin_url = admin_url.rstrip("/") if admin_url else None
        self.nack_delay_ms = nack_delay_ms
        self.operation_timeout = operation_timeout
        self.send_timeout_ms = send_timeout_ms
        self.max_payload = max_message_size - METADATA_RESERVE
        self.__api_key = api_key
        self._queues = PulsarQueues(self, api_key)
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

    async def _get_client(self) -> Any:
        if self._closed:
            raise ClosedError("Pulsar backend is closed; create a new one with get_pubsub()")
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await asyncio.to_thread(
                        _make_client, self.host, self.__api_key, self.operation_timeout,
                        self.listener, self._tls,
                    )
        return self._client

    def _ssl_context(self) -> ssl.SSLContext:
        """The client ``SSLContext`` of the TLS options (blocking: reads files), made once;
        for the admin API over https and the certificate check of a failed connect."""
        if self._ssl is None:
            t = self._tls
            self._ssl = client_context(t.ca_file, t.cert_file, t.key_file, t.verify_hostname, "pulsar")
        return self._ssl

    def _client_error(self, result: Any, what: str, *, after_connect: bool,
                      probe: str = "") -> PubSubError:
        """The SDK exception for a client result code; never mentions the token."""
        return _client_error(result, what, self.host, self.operation_timeout,
                             after_connect=after_connect, probe=probe)

    async def _create(self, what: str, make: Callable[[], Any]) -> Any:
        """Run a client create call; map its failure to the SDK's exception."""
        try:
            return await make()
        except pulsar_asyncio.PulsarException as exc:
            result = exc.error()
            probe = ""
            if result in _CONNECTION_RESULTS and self.host.startswith("pulsar+ssl://"):
                context = await asyncio.to_thread(self._ssl_context)
                refusal = await _tls_problem(self.host, context)
                if refusal is not None:
                    raise BrokerConnectionError(
                        f"could not connect to Pulsar at {_redact(self.host)} over TLS to {what}: "
                        + refusal.explain("pulsar", "--pulsar-host")
                    ) from exc
            if result in _CONNECTION_RESULTS:
                probe = await _probe(self.host)
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
        package docstring); others are ignored."""
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
        _hold(key, consumer_type, topic)
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
            _release(key)
            raise
        c = PulsarConsumer(
            self, topic, native, subscription, schema, consumer, key, bool(opts.get("ephemeral"))
        )
        if self._closed:
            await c.close()
            raise ClosedError("Pulsar backend was closed while a consumer was created")
        self._consumers.add(c)
        return c

    # -- queue lifecycle (``lifecycle.PulsarQueues``) ----------------------------

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Create the topic and its durable subscription; see ``PulsarQueues.create_queue``."""
        await self._queues.create_queue(topic, subscription)

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        """Create the queue if it is missing; idempotent."""
        await self._queues.ensure_queue(topic, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        """Whether the subscription exists on the topic; see ``PulsarQueues.queue_exists``."""
        return await self._queues.queue_exists(topic, subscription)

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """Delete the subscription, or the whole topic; see ``PulsarQueues.delete_queue``."""
        await self._queues.delete_queue(topic, subscription)

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
                async with asyncio.timeout(self.operation_timeout + 5):
                    await client.close()
            except Exception as exc:
                log.debug("closing the Pulsar client: %r", exc)

    def __repr__(self) -> str:
        auth = " auth=token" if self.__api_key else " auth=tls-certificate" if self._tls.cert_file else ""
        listener = f" listener={self.listener!r}" if self.listener else ""
        admin = f" admin_url={_redact(self.admin_url)!r}" if self.admin_url else ""
        return f"<PulsarBackend host={_redact(self.host)!r}{listener}{admin}{auth}>"
