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

TLS (amqps, ``tls=True``, flag ``--rabbitmq-tls``): pika wraps the socket in
the ``ssl.SSLContext`` that ``trustgraph_pubsub.tls.client_context`` builds
from ``tls_ca_file`` (default: the system's authorities), ``tls_cert_file`` /
``tls_key_file`` (a client certificate, for a broker with
``fail_if_no_peer_cert``) and ``tls_verify_hostname``; the context is built
by the constructor, so a bad file fails ``get_pubsub`` naming its flag.  The
port is not changed: amqps listens on 5671 by convention, so ``--rabbitmq-port
5671`` goes with ``--rabbitmq-tls``.  A broker certificate that does not
verify fails the connect with ``BrokerConnectionError`` saying why.  Credentials
stay ``PlainCredentials`` inside the TLS stream.

Options understood: ``prefetch`` on consumers (``basic.qos``; default
``DEFAULT_PREFETCH``); ``latency_bound`` on producers writes a message to
the socket at once (pika does not batch, but it writes only on the next loop
iteration, and throughput-bound producers are better served by that); once
per loop iteration, so a burst of them goes out in one write on the next.  A lost connection fails pending calls with
``ConnectionLostError`` at once; ``create_*`` reconnects.

Per-message costs (measured against raw pika in ``benchmarks/rabbitmq_bench``):
no log line and no broker round trip per message; an ack is one frame, sent
with whatever else is queued (``_coalesce_writes`` joins pika's queued frames
into one ``send()``, where pika would make one system call per frame); a
delivery becomes a ``BaseMessage`` with the broker's header dict as its
properties unless that needs cleaning; receive and send hand over without an
extra task, and yield to the loop every ``_YIELD_EVERY`` calls that did not
wait, so a busy consumer cannot starve the loop.

Layout (the same file names as every broker backend package):

* ``config.py``: timeouts and limits, validation of the backend's settings
  and a consumer's options, pika's connection parameters;
* ``connection.py``: the one ``AsyncioConnection`` (connect, reconnect,
  channels whose RPCs are awaitables, write coalescing);
* ``errors.py``: pika's exceptions as the SDK's errors, the log filter for
  expected 404s;
* ``producer.py`` / ``consumer.py``: ``RabbitMQProducer`` / ``RabbitMQConsumer``;
* ``lifecycle.py``: declaring, looking up and deleting subscription queues
  and the topic's subscription registry;
* this file: ``RabbitMQBackend``, which creates producers and consumers.

``RabbitMQBackend`` is the chain ``_BackendConnection`` (connection.py) <-
``_QueueLifecycle`` (lifecycle.py) <- ``RabbitMQBackend``, so producers,
consumers and tests reach ``backend._connection()``, ``backend._scratch()``,
``backend._passive_declare()`` ... on the backend as before.  A tuning knob is
read by the module that uses it (``from .config import ...``): to change one
in a test, patch that module (``MAX_MESSAGE_SIZE`` is read by ``producer``),
not this package, whose copies are re-exported for imports only.

Private internals of pika relied on (tested with pika 1.4.4, checked without a
broker by ``tests/unit/test_client_internals.py``; ``pyproject.toml`` keeps
pika to the minor versions that passed):

* ``AsyncioConnection._transport``: the connected stream transport, which
  ``_coalesce_writes`` (connection.py) works on.
* The transport's ``_tx_buffers`` (the deque of queued frames), ``_produce``
  (replaced on the instance by one that joins the frames first) and
  ``_on_socket_writable`` (pika's writability handler, which calls
  ``_produce``; latency-bound sends call it at once), of
  ``pika.adapters.utils.io_services_utils._AsyncPlaintextTransport``
  (connection.py, ``_coalesce_writes``).  Without them pika writes as it
  would on its own.
* Over TLS the transport is ``_AsyncSSLTransport``, whose ``_produce`` wraps
  the base class's send loop in OpenSSL's WANT_READ/WANT_WRITE bookkeeping;
  ``_coalesce_writes`` replaces ``_produce`` on it the same way (the joined
  chunk starts with the one a WANT_WRITE left first in ``_tx_buffers``, and
  Python's ``ssl`` lets a retried write move and grow), and relies on its
  ``_ssl_readable_action``/``_ssl_writable_action`` slots: the one holding
  the old ``_produce`` is re-pointed (pika asserts a slot equals
  ``self._produce``), and latency-bound sends write at once only while
  ``_ssl_writable_action`` is the coalescing ``_produce``.
* The ``pika.channel`` logger's WARNING for a broker's Channel.Close, whose
  arguments ``(reply_code, reply_text, channel)`` ``_ExpectedNotFound``
  (errors.py) reads to drop the 404 that answers a passive declare.
* The ``exceptions`` list of ``AMQPConnectionWorkflowFailed`` and the
  ``exception`` of pika's connector phase errors
  (``pika.adapters.utils.connection_workflow``), which ``_innermost``
  (errors.py) unwraps to name the innermost cause of a failed connect
  ("Connection refused", a failed certificate verification); read with
  ``getattr``, so without them the error text is only less specific.
* The text of pika's ``StreamLostError`` ("Stream connection lost:
  SSLError(... tlsv13 alert certificate required ...)"), the only place a
  broker's refusal of the client certificate survives; ``_connect_failure``
  (errors.py) reads the alert from it to say a client certificate is wanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ... import naming
from ...backend import Capabilities, ConsumerType, InitialPosition

# ``X as X``: also re-exported, for code outside the package that imports them
# from here.  The modules that use a knob read their own copy: patch it there.
from .config import (
    _CONSUMER_TYPES,
    RPC_TIMEOUT,
    _check_consumer_options,
    _check_settings,
    _tls_context,
)
from .config import CONFIRM_TIMEOUT as CONFIRM_TIMEOUT
from .config import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from .config import DEFAULT_PREFETCH as DEFAULT_PREFETCH
from .config import MAX_IN_FLIGHT as MAX_IN_FLIGHT
from .config import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from .consumer import RabbitMQConsumer
from .errors import _LOOKUPS as _LOOKUPS
from .lifecycle import _QueueLifecycle
from .producer import RabbitMQProducer

__all__ = ["RabbitMQBackend", "RabbitMQConsumer", "RabbitMQProducer"]

log = logging.getLogger(__name__)

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


class RabbitMQBackend(_QueueLifecycle):
    """The RabbitMQ backend (see the package docstring for every choice it makes)."""

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
        tls: bool = False,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_verify_hostname: bool = True,
    ) -> None:
        _check_settings(
            host, port, username, password, queue_type, returns_per_redelivery, heartbeat
        )
        context = _tls_context(tls, tls_ca_file, tls_cert_file, tls_key_file, tls_verify_hostname)
        self.queue_type = queue_type
        self.returns_per_redelivery = returns_per_redelivery
        super().__init__(host, port, username, password, vhost, heartbeat, context)
        self._children: set[RabbitMQProducer | RabbitMQConsumer] = set()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._is_connected() else "idle"
        return (
            f"<RabbitMQBackend {'amqps' if self.tls else 'amqp'} "
            f"{self.username}@{self.host}:{self.port} vhost={self.vhost!r} {state}>"
        )

    # -- the PubSubBackend API ----------------------------------------------------

    async def create_producer(
        self, topic: str, schema: type[Any] | None, **opts: Any
    ) -> RabbitMQProducer:
        """A producer.  ``latency_bound=True`` (requests, replies, pushes) writes the
        first message of a loop iteration to the socket at once instead of at the
        next iteration (``_BackendConnection._push``)."""
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
        broker with this consumer or its connection (see the package docstring).
        """
        self._check()
        parsed = naming.parse(topic)
        queue = naming.check_rabbitmq_name(naming.rabbitmq_queue(parsed, subscription), parsed)
        prefetch = _check_consumer_options(
            topic, initial_position, consumer_type, opts.get("prefetch")
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
