"""MQTT 5 backend over paho-mqtt 2.x, proven against Mosquitto 2.0.

Names come from ``naming``: a generic ``qos/tenant/namespace/queue`` is the
MQTT topic ``tenant/namespace/queue``; a subscription is the shared
subscription ``$share/<subscription>/<topic>``, so consumers of one
subscription compete and distinct subscriptions each get every message.  The
qos is the MQTT QoS of publishes: q0 -> 0, q1 -> 1, q2 -> 2.  Properties
travel as MQTT 5 user properties.

Threading.  There is no paho network thread: each paho client is driven from
the event loop.  Its socket is watched with ``loop.add_reader``; reads call
``loop_read`` and paho's callbacks therefore run on the loop, where they only
append to deques and resolve futures.  Once connected, paho's socket is
replaced by a ``_Wire`` that gathers paho's writes (one ``send`` per packet
otherwise: a syscall and, with TCP_NODELAY, a TCP segment per ack) into one
write per loop iteration, and serves paho's few-bytes-at-a-time reads from
one large ``recv``.  ``loop_misc`` runs once a second for keep-alive pings.
Only the TCP connect (DNS and ``connect()``) runs in the default executor,
before the loop touches that client.  ``TCP_NODELAY`` is set on every socket:
paho never sets it, and Nagle's algorithm costs a QoS 1 round trip 40-90 ms.
Closing half-closes the socket after the DISCONNECT and waits for the broker
to close its side, so the acks before it are processed before the next
consumer can take the session over.

TLS (``--mqtt-tls``; MQTT over TLS usually listens on 8883, so
``--mqtt-port 8883`` goes with it).  One ``ssl.SSLContext`` per backend, made
by ``trustgraph_pubsub.tls.client_context`` from ``--mqtt-tls-ca-file`` (else
the system's authorities), ``--mqtt-tls-cert-file``/``--mqtt-tls-key-file``
(mutual TLS) and ``--mqtt-tls-verify-hostname``, is given to every paho
client (``tls_set_context``).  paho wraps the socket and completes the
handshake inside ``connect()`` (in the executor, within ``connect_timeout``);
a certificate that fails verification is then a ``BrokerConnectionError``
saying so.  After that ``_Wire`` drives the ``ssl.SSLSocket`` like a plain
one, with what TLS changes (see ``wire``): want-read/want-write on either
side, a refused write retried with the same bytes, and decrypted bytes held
in the SSL object (``pending()``) read without waiting for the socket.  The
half-close after DISCONNECT drops TLS without a close_notify: the broker has
read the DISCONNECT by then and closes the connection itself.

Durable subscriptions.  In MQTT a subscription's backlog lives in client
sessions, and Mosquitto hands each message of a shared subscription to its
members in turn, *including members whose session is offline*: a session
left behind keeps absorbing its share, and ending a session drops what it
holds.  So every q1/q2 consumer connects with a stable client id,
``naming.mqtt_client_id(topic, subscription, slot)``, where ``slot`` is the
lowest number no other consumer of this process holds, a persistent session
(``clean_start`` false, ``SessionExpiryInterval`` = ``session_expiry``) and
``manual_ack``.  A new consumer on slot N takes over slot N's session and
the messages waiting in it (paho's ``on_message`` is set before ``connect``,
so nothing queued for the session is acknowledged unseen).

* Slot 0 is the subscription's anchor.  Closing its consumer only
  disconnects: the session stays subscribed and keeps the unacked messages
  and everything published meanwhile, for the next consumer (which takes
  slot 0 again).  While it is closed and consumers on other slots run, its
  share of new messages waits for the next consumer instead of going to
  them; start consumers before stopping old ones where that matters.
* Closing a consumer on a higher slot hands its messages back: it
  unsubscribes (no new messages are routed to it), republishes every
  message it holds unacked, and every message its session still releases, to
  the subscription's redelivery topic (``naming.mqtt_redelivery_topic``,
  which every consumer of the subscription also subscribes to, shared),
  acknowledges each original only once the broker confirmed its copy, and
  ends its session.  A copy counts one more delivery only if ``receive``
  returned the message; one merely prefetched keeps its count.  Whether the
  session is drained is asked of the broker itself: an UNSUBSCRIBE is
  answered after everything the preceding acks released.  If nobody else
  holds the subscription (the copy finds no subscriber) the consumer keeps
  its session instead, like slot 0.
* A consumer whose connection drops keeps its session; the resilient
  ``Consumer`` recreates it on the lowest free slot, normally the same one.
* Two processes may pick the same slot: the broker then disconnects the
  older client (Mosquitto 2.0 without the "session taken over" reason), which
  gets ``ConnectionLostError`` and comes back on the same slot; a slot whose
  connection was lost three times within a minute is avoided by this process
  for a minute, so two live consumers settle on different slots (one broker
  restart or network failure does not move a consumer).  Messages of a
  session nobody resumes wait until ``session_expiry`` and are then dropped
  by the broker: give long-lived processes the same number of consumers when
  they restart.

Sessions are always opened with clean start unset, even fresh ones:
Mosquitto 2.0 never persists an MQTT 5 session that started clean.

q0 consumers use throwaway sessions (unique client id, expiry 0); nothing
of theirs survives them.

Ephemeral subscriptions (``create_consumer(..., ephemeral=True)``): the
consumer still takes a slot (so its client id is the slot's, and
``queue_exists`` in this process sees it), but its session is opened with
**clean start** and **SessionExpiryInterval 0** (MQTT 5): the broker
discards the session, its shared-subscription membership and what it holds
as soon as the network connection ends, whether the consumer closed or its
process died.  Closing only disconnects (no hand-back: the messages it
holds go with the session); ``unsubscribe`` does not look for other
sessions of the subscription.  ``queue_exists`` asked from another process
while the consumer is alive connects with its client id and so takes its
session over (as for durable slots): ask it only about consumers that are
gone.

Acknowledgement and nack.  An ack is the MQTT PUBACK of that one message.
MQTT has no nack (``Capabilities.native_nack`` is False): a nacked q1/q2
message is published again to the subscription's redelivery topic with
``redelivery_count`` + 1, and the original is acknowledged once the broker
confirmed that copy, so the count survives a lost connection or a reopened
slot and a message nacked every time reaches the ``Consumer``'s dead-letter
limit.  The copy goes to any consumer of the subscription.  (q0, or a copy
the broker does not take: the message goes back on the local queue with the
count in memory, its PUBACK withheld until it is finally acked.)  The count
travels as the user property ``tg-mqtt-redeliveries`` (reserved: a producer
may not set it) and a session redelivery after a lost connection adds one
(the MQTT DUP flag), but a message that outlives several crashed consumers
without a nack or hand-back is counted once, which is why
``Capabilities.redelivery_count`` is False.  Consumers subscribe at QoS
1 even on q2 topics: paho sends PUBREC for an incoming QoS 2 message before
the handler ran, so a crash after it would lose the message.  q2 therefore
means an exactly-once *publish* (``send`` returns after PUBCOMP); delivery is
at least once (``Capabilities.exactly_once`` is False).

Producers of one backend share one connection (unique client id, a
persistent session so that an interrupted QoS 2 flow resumes).  q0/q1 sends
return once paho has the message; up to ``max_inflight`` QoS 1/2 publishes
(less if the broker's Receive Maximum is lower) are in flight, beyond that
``send`` waits for a PUBACK; ``flush`` waits for the broker's PUBACKs.  If
the connection drops, the backend reconnects it by itself with
``retry.Backoff``; messages in flight are kept and resent (QoS 1 with DUP);
``send`` raises ``ConnectionLostError`` while it is down, and ``flush``
raises it while messages wait for it; a broker that refuses the credentials
on a reconnect ends the reconnecting, and ``send``/``flush`` raise that
``AuthenticationError``.  Mosquitto 2.0 does not restore shared
subscriptions after a restart, so for ``UNROUTED_GRACE`` seconds after a
reconnect a q1/q2 message the broker routed to nobody is published again
until the consumers have resubscribed.  Only a PUBACK says "no matching
subscribers" (Mosquitto answers a QoS 2 PUBREC with success regardless), so
q2 messages are sent at QoS 1 in that window: ``send`` returns once a
subscriber took one, and a connection lost again before its PUBACK may
deliver it twice.  A QoS 2 flow interrupted by the restart itself is
finished at QoS 2 and not covered (see ``_Publisher``).  Closing ends the
producer session: its id is random, nobody would resume it.

Not MQTT features: replay from earliest (``initial_position="earliest"`` is
accepted and behaves like latest for a new subscription; retained messages
are not used to fake it), keys (``key`` is ignored: one producer's messages
on one topic keep their order anyway), consumer types other than
``shared``.  There are no queues: ``create_queue``/``ensure_queue`` create
the slot-0 session (subscribed, empty), so messages published before the
first consumer connects are kept; ``queue_exists`` asks whether that session
exists; ``delete_queue`` ends the subscription's sessions.  These connect
with the slot's client id and so disconnect a consumer of another process
holding it (which comes back, see above); ``delete_queue(topic)`` can only
reach the subscriptions this process has used, since MQTT cannot list them
(``Capabilities.queue_lifecycle`` is False).

Broker settings that matter (Mosquitto): ``max_queued_messages`` (default
1,000 per session; raise it or messages beyond it are dropped),
``set_tcp_nodelay true``, ``persistence true`` for q1 to survive a restart.
The largest message is MQTT's 256 MiB packet limit less room for the topic
and properties; 100 MiB were seen to work with Mosquitto.

Modules: ``config`` (knobs, settings checks), ``errors`` (reason codes to SDK
errors), ``connection`` (``_Link``: one paho client on the loop), ``producer``,
``consumer``, ``lifecycle`` (sessions as queues), and three that only MQTT
needs: ``sessions`` (the slots), ``packets`` (user properties in wire form),
``wire`` (``_Wire``, paho's socket stand-in).

Private internals of paho-mqtt relied on (tested with paho-mqtt 2.2.0, the
version ``constraints.txt`` pins; the first two are checked without a broker
by ``tests/unit/test_client_internals.py``, and ``pyproject.toml`` keeps
paho-mqtt to the minor versions that passed):

* ``Client._sock``: swapped for a ``_Wire`` once connected (paho has no hook
  for its socket object) and cleared before a reconnect (``connection._Link``
  ``_attach``/``_forget_socket``); ``Client.socket()`` returns it, and
  ``Client._sock_close`` closes it, so paho's DISCONNECT goes out through
  ``_Wire.close``.  ``_Wire`` (``wire.py``) implements every method paho calls
  on it (``send``, ``recv``, ``close``, ``fileno``, ``setblocking``, and
  ``pending``, which paho asks of TLS sockets), and serves paho's reads of a
  packet a few bytes at a time from one ``recv``.  Over TLS the socket it
  takes is paho's ``ssl.SSLSocket`` (``Client.socket()`` after ``connect``),
  whose SSL errors ``_Wire`` turns into paho's ``BlockingIOError`` itself.
* ``Client.publish`` and ``Client._send_publish`` using publish properties
  only through ``pack()``: ``_PackedProperties`` (``packets.py``), a
  ``Properties`` subclass that skips the base ``__init__`` (and its
  ``__setattr__``, through ``object.__setattr__``), packs user properties once
  per message instead of on every call.
* Behaviours paho does not document (no unit test pins them; the broker
  tests depend on them):
  ``max_inflight_messages_set(0)`` means no in-flight limit (``_Link``);
  with TLS, ``connect``/``reconnect`` return with the handshake done
  (``_ssl_wrap_socket`` calls ``do_handshake``), so a certificate failure is
  raised by them, and the CONNECT they write may already fail on a broker's
  TLS alert: paho then calls ``on_socket_close`` (in the executor) before
  closing the socket, and ``_Link._on_socket_close`` reads the alert from it;
  ``publish`` answers ``MQTT_ERR_QUEUE_SIZE`` when the next message id is
  still in flight, and ``_Link.publish`` tries the next id; ``reconnect()`` of
  the same client resends QoS 1 publishes in flight with DUP and resumes QoS 2
  flows (``_Publisher`` keeps messages across a lost connection on it); an
  incoming QoS 2 message is PUBREC'd before ``on_message`` even with
  ``manual_ack``, and PUBREC reason codes are ignored (why consumers subscribe
  at QoS 1 and q2 sends go at QoS 1 in the grace window).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ... import naming
from ...backend import Capabilities, ConsumerType, InitialPosition
from ...errors import ClosedError, PubSubError
from . import lifecycle
from .config import (
    MAX_PAYLOAD,
    REDELIVERY_PROPERTY,
    check_consumer_options,
    check_settings,
    tls_context,
)
from .connection import _Link as _Link
from .consumer import MQTTConsumer
from .packets import _user_properties as _user_properties
from .producer import MQTTProducer, _Publisher
from .sessions import _SLOTS as _SLOTS
from .sessions import _SlotKey
from .wire import _Wire as _Wire

log = logging.getLogger(__name__)

__all__ = ["MQTTBackend", "MQTTConsumer", "MQTTProducer", "REDELIVERY_PROPERTY"]


class MQTTBackend:
    """MQTT 5 through paho-mqtt; see the package docstring for the semantics."""

    name = "mqtt"

    def __init__(
        self,
        host: str = "localhost",
        port: int = 1883,
        username: str | None = None,
        password: str | None = None,
        session_expiry: int = 7 * 24 * 3600,
        max_inflight: int = 100,
        keepalive: int = 30,
        connect_timeout: float = 10.0,
        tls: bool = False,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_verify_hostname: bool = True,
    ) -> None:
        check_settings(
            host, port, username, password, session_expiry, max_inflight, keepalive,
            connect_timeout,
        )
        #: the client context every connection of this backend uses (None: plain TCP).
        self.tls_context = tls_context(tls, tls_ca_file, tls_cert_file, tls_key_file,
                                       tls_verify_hostname)
        self.tls = tls
        self.tls_cert_file = tls_cert_file or None
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.session_expiry = session_expiry
        self.max_inflight = max_inflight
        self.keepalive = keepalive
        self.connect_timeout = float(connect_timeout)
        self.capabilities = Capabilities(
            persistent=True,
            replay_from_earliest=False,
            native_nack=False,
            ordering=True,
            consumer_groups=True,
            max_message_size=MAX_PAYLOAD,
            queue_lifecycle=False,
            redelivery_count=False,
            consumer_types=frozenset({"shared"}),
            exactly_once=False,
        )
        self.publisher: _Publisher | None = None
        self._publisher_lock: asyncio.Lock | None = None
        self._producers: set[MQTTProducer] = set()
        self._consumers: set[MQTTConsumer] = set()
        self.closed = False

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        user = f" user={self.username!r}" if self.username is not None else ""
        tls = " tls" if self.tls else ""
        return f"<MQTTBackend {self.where}{tls}{user} closed={self.closed}>"

    # -- producers and consumers ---------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"MQTT backend for {self.where} is closed")

    async def _ensure_publisher(self) -> _Publisher:
        if self._publisher_lock is None:
            self._publisher_lock = asyncio.Lock()
        async with self._publisher_lock:
            self._check_open()
            if self.publisher is None:
                publisher = _Publisher(self)
                try:
                    await publisher.open()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await publisher.link.close()
                    raise
                self.publisher = publisher
            publisher = self.publisher
        await publisher.ready()
        return publisher

    async def create_producer(
        self, topic: str, schema: type[Any] | None, **opts: Any
    ) -> MQTTProducer:
        """A producer on the backend's shared connection.

        ``latency_bound`` needs nothing here: paho never batches, every
        publish is written at once.  Other options are ignored.
        """
        naming.mqtt_topic(topic)
        self._check_open()
        await self._ensure_publisher()
        producer = MQTTProducer(self, topic, schema)
        self._producers.add(producer)
        return producer

    async def create_consumer(
        self,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        initial_position: InitialPosition = "latest",
        consumer_type: ConsumerType = "shared",
        **opts: Any,
    ) -> MQTTConsumer:
        """Join ``subscription`` on ``topic``; subscribed when this returns.

        ``prefetch`` becomes the MQTT 5 Receive Maximum: how many unacked
        messages the broker sends ahead (default 100).  ``ephemeral=True``: a
        clean-start session with expiry 0, gone with the connection (see the
        package docstring).
        """
        naming.mqtt_shared_filter(topic, subscription)
        prefetch = check_consumer_options(topic, subscription, initial_position, consumer_type, opts)
        self._check_open()
        consumer = MQTTConsumer(
            self, topic, subscription, schema, prefetch, bool(opts.get("ephemeral"))
        )
        self._consumers.add(consumer)
        await consumer._open()
        return consumer

    # -- sessions as queues ----------------------------------------------------------------

    def _key(self, topic: str, subscription: str) -> _SlotKey:
        return (self.host, self.port, naming.parse(topic).identity, subscription)

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Create the subscription's slot-0 session, subscribed, so that messages wait for it."""
        await lifecycle.create_queue(self, topic, subscription)

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        """Same as ``create_queue``: subscribing again is harmless in MQTT."""
        await self.create_queue(topic, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        """Whether the subscription's slot-0 session exists (held here, or on the broker)."""
        return await lifecycle.queue_exists(self, topic, subscription)

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """End the subscription's sessions; without ``subscription``, those this process used."""
        await lifecycle.delete_queue(self, topic, subscription)

    async def close(self) -> None:
        """Close every consumer (as ``close`` does) and producer, then the connection."""
        if self.closed:
            return
        self.closed = True
        consumers = list(self._consumers)
        results = await asyncio.gather(*(c.close() for c in consumers), return_exceptions=True)
        for c, r in zip(consumers, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("closing %r: %s", c, r)
        for p in list(self._producers):
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await p.close()
            except (TimeoutError, PubSubError) as exc:
                log.warning("closing %r: %s", p, exc)
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            await publisher.close()
