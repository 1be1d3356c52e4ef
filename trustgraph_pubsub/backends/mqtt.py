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

Private internals of paho-mqtt this module relies on (checked without a
broker by ``tests/unit/test_client_internals.py``; ``pyproject.toml`` keeps
paho-mqtt to the minor versions that passed):

* ``Client._sock``: swapped for a ``_Wire`` once connected (paho has no hook
  for its socket object) and cleared before a reconnect; ``_Wire`` implements
  every method paho calls on it (``send``, ``recv``, ``close``, ``fileno``,
  ``setblocking``).
* ``Client.publish`` and ``Client._send_publish`` using publish properties
  only through ``pack()``: ``_PackedProperties``, a ``Properties`` subclass
  that skips the base ``__init__``, packs user properties once per message
  instead of on every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

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
    UnsupportedError,
)
from ..redact import shown
from ..retry import Backoff, retry

log = logging.getLogger(__name__)

__all__ = ["MQTTBackend", "MQTTConsumer", "MQTTProducer", "REDELIVERY_PROPERTY"]

#: user property carrying the redelivery count of a handed-back message.
REDELIVERY_PROPERTY = "tg-mqtt-redeliveries"
#: MQTT's largest packet is 268,435,455 bytes; keep 1 MiB for topic and properties.
MAX_PAYLOAD = 256 * 1024 * 1024 - 1024 * 1024
#: messages the broker may push ahead of acks when ``prefetch`` is not given.
DEFAULT_PREFETCH = 100
#: seconds after a reconnect in which "no matching subscribers" means "not yet" (see _Publisher).
UNROUTED_GRACE = 15.0
#: longest a closing consumer spends handing its messages back.
HANDOVER_TIMEOUT = 30.0
#: a slot whose connection was lost this many times within ``TAKEOVER_WINDOW`` s is
#: avoided that long: another process's consumer is probably taking it over (a
#: takeover the broker names, reason 0x8E, counts as ``TAKEOVER_LIMIT`` at once).
TAKEOVER_LIMIT = 3
TAKEOVER_WINDOW = 60.0
#: ``loop_misc`` cadence (keep-alive pings, ping timeouts).
_MISC_INTERVAL = 1.0
#: packets handled per readable event before yielding to the loop.
_READ_BATCH = 16
#: longest a DISCONNECT may take to be written before the socket is dropped.
_CLOSE_TIMEOUT = 5.0
#: bytes buffered for the socket above which sends wait (and below which they go on).
_WIRE_HIGH = 8 * 1024 * 1024
_WIRE_LOW = 1024 * 1024
#: bytes asked of the socket per read (paho's own reads are a few bytes each).
_RECV_CHUNK = 256 * 1024

_QOS = {"q0": 0, "q1": 1, "q2": 2}
_AUTH_FAILURES = frozenset({0x86, 0x87, 0x8C})  # bad user/password, not authorized, bad auth method
_NO_MATCHING_SUBSCRIBERS = 0x10
_SESSION_TAKEN_OVER = 0x8E
_SHARED_NOT_SUPPORTED = 0x9E
_SESSION_EXPIRY_MAX = 0xFFFFFFFF

_OPEN, _CLOSING, _CLOSED, _LOST = "open", "closing", "closed", "lost"


# -- user properties ----------------------------------------------------------


class _PackedProperties(Properties):
    """User properties packed once, in the wire form ``Properties.pack`` gives.

    paho only ever calls ``pack()`` on publish properties; the base class
    builds two lookup tables per instance and packs on every call, which is
    most of a small publish's cost.  ``__init__`` deliberately skips it.
    """

    def __init__(self, packed: bytes) -> None:
        object.__setattr__(self, "_packed", packed)

    def pack(self) -> bytes:
        packed: bytes = object.__getattribute__(self, "_packed")
        return packed

    def __str__(self) -> str:
        return f"[{len(self.pack())} bytes of user properties]"

    __repr__ = __str__


def _properties(packet_type: int) -> Properties:
    """An empty paho ``Properties`` (its constructor carries no type hints)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _put_string(out: bytearray, s: str, what: str, topic: str) -> None:
    if "\x00" in s:
        raise ConfigurationError(
            f"property {what} on {topic}: MQTT strings cannot contain NUL (U+0000); "
            "remove it or encode the value (base64, JSON)"
        )
    try:
        b = s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"property {what} on {topic} is not valid UTF-8 text ({exc.reason}); "
            "MQTT user properties are UTF-8 strings"
        ) from exc
    if len(b) > 0xFFFF:
        raise ConfigurationError(
            f"property {what} on {topic} is {len(b)} bytes; an MQTT string holds at most 65,535"
        )
    out += len(b).to_bytes(2, "big")
    out += b


def _user_properties(
    props: Mapping[str, str], topic: str, redeliveries: int | None = None
) -> Properties | None:
    """MQTT 5 user properties for a publish, or None when there are none."""
    if not props and redeliveries is None:
        return None
    body = bytearray()
    for k, v in props.items():
        if k == REDELIVERY_PROPERTY:
            raise ConfigurationError(
                f"property {k!r} on {topic} is reserved by the MQTT backend (redelivery count); "
                "use another name"
            )
        body.append(0x26)
        _put_string(body, k, repr(k), topic)
        _put_string(body, v, f"{k!r} value", topic)
    if redeliveries is not None:
        body.append(0x26)
        _put_string(body, REDELIVERY_PROPERTY, REDELIVERY_PROPERTY, topic)
        _put_string(body, str(redeliveries), REDELIVERY_PROPERTY, topic)
    return _PackedProperties(_varint(len(body)) + bytes(body))


# -- slots ----------------------------------------------------------------------

_SlotKey = tuple[str, int, str, str]


class _SlotRegistry:
    """Which durable-session slots this process's consumers hold, per subscription.

    Process-wide (two backends in one process must not take over each
    other's sessions); a lock because several event loops may share it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[_SlotKey, set[int]] = {}
        self._highest: dict[_SlotKey, int] = {}
        self._takeovers: dict[tuple[_SlotKey, int], list[float]] = {}

    def acquire(self, key: _SlotKey) -> int:
        now = time.monotonic()
        with self._lock:
            held = self._held.setdefault(key, set())
            slot = 0
            while slot in held or self._avoided(key, slot, now):
                slot += 1
            held.add(slot)
            self._highest[key] = max(slot, self._highest.get(key, 0))
            return slot

    def _avoided(self, key: _SlotKey, slot: int, now: float) -> bool:
        times = self._takeovers.get((key, slot))
        if not times:
            return False
        times[:] = [t for t in times if now - t < TAKEOVER_WINDOW]
        return len(times) >= TAKEOVER_LIMIT

    def release(self, key: _SlotKey, slot: int) -> None:
        with self._lock:
            self._held.get(key, set()).discard(slot)

    def lost(self, key: _SlotKey, slot: int, weight: int = 1) -> None:
        """Count a lost connection of ``slot`` (``weight`` > 1 for a certain takeover)."""
        with self._lock:
            self._takeovers.setdefault((key, slot), []).extend([time.monotonic()] * weight)

    def held(self, key: _SlotKey) -> set[int]:
        with self._lock:
            return set(self._held.get(key, ()))

    def highest(self, key: _SlotKey) -> int:
        with self._lock:
            return self._highest.get(key, 0)

    def subscriptions(self, host: str, port: int, identity: str) -> list[str]:
        with self._lock:
            return sorted({k[3] for k in self._highest if k[:3] == (host, port, identity)})


_SLOTS = _SlotRegistry()


# -- one paho client on the event loop ----------------------------------------------


class _Wire:
    """paho's socket, with writes gathered and sent once per loop iteration.

    paho writes every packet with its own ``send`` call; acknowledging or
    publishing a burst of messages then costs one system call (and, with
    TCP_NODELAY, one TCP segment) each.  This stands in for the socket: a
    ``send`` appends to a buffer and schedules one flush on the loop, where
    the buffer goes out in as few ``send`` calls as the kernel takes; what it
    does not take is written by an ``add_writer`` callback.  ``close`` sends
    what is left (paho closes right after queueing DISCONNECT) before closing.
    """

    def __init__(self, sock: socket.socket, link: _Link) -> None:
        self.sock = sock
        self._link = link
        self._loop = link.loop
        self._out = bytearray()
        self._in = b""
        self._pos = 0
        self._scheduled = False
        self._writing = False
        self._closing = False
        self._reading = False
        self._finished = False
        self._deadline: asyncio.TimerHandle | None = None
        self.failed = False
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._drained: list[asyncio.Future[None]] = []

    # -- what paho calls ------------------------------------------------------

    def send(self, data: bytes | bytearray) -> int:
        if self.failed or self._closing:
            raise OSError("MQTT connection closed")
        self._out += data
        if not self._scheduled and not self._writing:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return len(data)

    def recv(self, size: int) -> bytes:
        """paho reads a packet a few bytes at a time; serve that from one big read."""
        data, pos = self._in, self._pos
        if pos >= len(data):
            data = self.sock.recv(max(size, _RECV_CHUNK))
            if len(data) <= size:
                self._in, self._pos = b"", 0
                return data
            pos = 0
        end = pos + size
        if end >= len(data):
            self._in, self._pos = b"", 0
            return data[pos:] if pos else data
        self._in, self._pos = data, end
        return data[pos:end]

    @property
    def has_input(self) -> bool:
        """Bytes read from the socket that paho has not taken yet."""
        return self._pos < len(self._in)

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        """Send what is buffered, then close once the broker has read it all.

        paho calls this right after queueing DISCONNECT.  The socket is only
        half-closed once the buffer is out, and closed when the broker closes
        its side: by then it has processed every ack before the DISCONNECT.
        Closing at once could let a consumer that takes this session over next
        overtake acks still unread in the broker's socket buffer, and have
        those messages delivered again.  At once when off the loop or failed.
        """
        if self._closing:
            return
        self._closing = True
        if self.failed or not self._on_loop():
            self._finish()
            return
        self._deadline = self._loop.call_later(_CLOSE_TIMEOUT, self._finish)
        self._flush()
        if not self._out and not self.failed:
            self._half_close()

    def _half_close(self) -> None:
        if self._reading or self._finished:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self._loop.add_reader(self.sock, self._await_eof)
        except (OSError, ValueError, RuntimeError):
            self._finish()
            return
        self._reading = True

    def _await_eof(self) -> None:
        try:
            data = self.sock.recv(_RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._finish()

    # -- the loop's side ----------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._out)

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._link.loop_thread

    def _flush(self) -> None:
        self._scheduled = False
        out = self._out
        if not out or self.failed:
            return
        try:
            n = self.sock.send(out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._fail(exc)
            return
        if n:
            del out[:n]
        if out:
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self.sock, self._flush)
        else:
            if self._writing:
                self._writing = False
                self._loop.remove_writer(self.sock)
            if self._closing:
                self._half_close()
        if self._drained and (len(out) < _WIRE_LOW or not out):
            waiters, self._drained = self._drained, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def drained(self, *, empty: bool = False) -> None:
        """Wait until the buffer is below the low-water mark, or ``empty`` (or the wire failed)."""
        while not (self.failed or self._closing):
            if not self._out if empty else len(self._out) < _WIRE_LOW:
                return
            fut: asyncio.Future[None] = self._loop.create_future()
            self._drained.append(fut)
            await fut

    def _fail(self, exc: BaseException) -> None:
        self.failed = True
        self._out.clear()
        self._finish()
        if not self._closing:
            self._link.broken(exc)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._deadline is not None:
            self._deadline.cancel()
        if self._reading:
            self._reading = False
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_reader(self.sock)
        if self._writing:
            self._writing = False
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_writer(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()
        waiters, self._drained = self._drained, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if self._on_loop():
            if not self.done.done():
                self.done.set_result(None)
        else:
            self._loop.call_soon_threadsafe(self._set_done)

    def _set_done(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Link:
    """One paho client driven by the event loop.

    Every paho call and callback happens on the loop thread, except the TCP
    connect, which runs in the default executor before the loop watches the
    socket.  Reads: ``add_reader`` -> ``loop_read``.  Writes: the ``_Wire``
    that replaces paho's socket once connected.  paho's own in-flight limit
    is off (``max_inflight_messages`` 0: its queue rescans every in-flight
    message on each PUBACK); the publisher keeps its own window instead.
    """

    def __init__(
        self,
        backend: MQTTBackend,
        client_id: str,
        *,
        session_expiry: int,
        clean_start: bool,
        receive_maximum: int | None = None,
        on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None] | None = None,
        on_lost: Callable[[ReasonCode], None] | None = None,
    ) -> None:
        self.backend = backend
        self.client_id = client_id
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self._session_expiry = session_expiry
        self._clean_start = clean_start
        self._receive_maximum = receive_maximum
        self.on_lost = on_lost
        #: called on every (re)connect, after CONNACK.
        self.on_connected: Callable[[], None] | None = None
        #: called with (mid, reason code) for publishes no ``publish_confirmed`` waits for.
        self.published: Callable[[int, ReasonCode], None] | None = None
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        c.connect_timeout = backend.connect_timeout
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        if backend.username is not None:
            c.username_pw_set(backend.username, backend.password)
        # Every callback is set before connect(): a resumed session's queued
        # messages arrive right after CONNACK.
        self._message = on_message
        if on_message is not None:
            c.on_message = self._on_message
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_acked
        c.on_unsubscribe = self._on_acked
        c.on_socket_close = self._on_socket_close
        self._client = c
        self._sock: socket.socket | None = None
        self.wire: _Wire | None = None
        self._writing = False
        self._misc: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._acks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._confirms: dict[int, asyncio.Future[ReasonCode]] = {}
        self.connected = False
        self.closing = False
        #: the broker's Receive Maximum: QoS 1/2 publishes it takes in flight.
        self.server_receive_maximum = 65535
        #: callbacks seen, so that ``_readable`` knows a read made progress.
        self.events = 0

    # -- connect / disconnect -----------------------------------------------

    async def open(self) -> bool:
        """Connect and wait for CONNACK; True when the broker resumed a session."""
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry
        if self._receive_maximum is not None:
            props.ReceiveMaximum = self._receive_maximum
        b = self.backend
        connect = functools.partial(
            self._client.connect,
            b.host,
            b.port,
            b.keepalive,
            clean_start=self._clean_start,
            properties=props,
        )
        return await self._establish(connect)

    async def reconnect(self) -> bool:
        """Connect again with the same client (paho resends what was in flight)."""
        if self.closing:
            raise ClosedError(f"MQTT client {self.client_id!r} is closed")
        self._forget_socket()
        return await self._establish(self._client.reconnect)

    async def _establish(self, connect: Callable[[], MQTTErrorCode]) -> bool:
        b = self.backend
        self._connack = self.loop.create_future()
        job = self.loop.run_in_executor(None, connect)
        try:
            rc = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(lambda _f: self.loop.call_soon_threadsafe(self._drop_socket))
            raise
        except (OSError, ValueError) as exc:
            raise b.unreachable(exc) from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._drop_socket()
            raise BrokerConnectionError(
                f"cannot connect to the MQTT broker at {b.where}: {mqtt.error_string(rc)}"
            )
        self._attach()
        try:
            async with asyncio.timeout(b.connect_timeout):
                return await self._connack
        except TimeoutError:
            self._drop_socket()
            raise BrokerConnectionError(
                f"the MQTT broker at {b.where} accepted the TCP connection but sent no CONNACK "
                f"within {b.connect_timeout}s; is it an MQTT 5 broker?"
            ) from None
        except BaseException:
            self._drop_socket()
            raise

    def _attach(self) -> None:
        sock = self._client.socket()
        if not isinstance(sock, socket.socket):
            raise BrokerConnectionError(f"MQTT connection to {self.backend.where} closed at once")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        if hasattr(self._client, "_sock"):
            # paho has no hook for its socket object; swapping the attribute it
            # keeps it in is the one way to gather its writes.
            self.wire = _Wire(sock, self)
            self._client._sock = self.wire
        self.loop.add_reader(sock, self._readable)
        self.kick()
        self._misc = self.loop.call_later(_MISC_INTERVAL, self._tick)

    async def close(self, *, end_session: bool = False) -> None:
        """DISCONNECT (ending the session if asked) and wait until it is sent."""
        self.closing = True
        self._fail_waiters(ClosedError(f"MQTT client {self.client_id!r} closed"))
        if self._sock is None or not self.connected:
            self._drop_socket()
            return
        props = None
        if end_session:
            props = _properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        self._closed = self.loop.create_future()
        wire = self.wire
        self._client.disconnect(properties=props)
        self.kick()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._closed
                if wire is not None:
                    await wire.done
        except TimeoutError:
            log.warning("MQTT client %r: DISCONNECT not sent in %ss; dropping the socket",
                        self.client_id, _CLOSE_TIMEOUT)
        finally:
            self._drop_socket()

    def _forget_socket(self) -> None:
        """Make paho drop a socket this link already closed (so reconnect starts clean)."""
        if self._client.socket() is not None and self._sock is None and hasattr(self._client, "_sock"):
            self._client._sock = None

    def _drop_socket(self) -> None:
        """Stop watching and close the socket, whatever state paho is in."""
        self.connected = False
        sock = self._sock
        wire = self.wire
        self._detach(sock)
        if wire is not None:
            wire.failed = True
            wire._finish()
        elif sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._forget_socket()

    def _detach(self, sock: Any) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if sock is not None and (sock is self._sock or sock is self.wire):
            raw = self._sock
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self.loop.remove_reader(raw)  # type: ignore[arg-type]
            if self._writing:
                with contextlib.suppress(ValueError, OSError, RuntimeError):
                    self.loop.remove_writer(raw)  # type: ignore[arg-type]
            self._sock = None
            self._writing = False

    # -- the loop's side ----------------------------------------------------

    def _readable(self) -> None:
        c = self._client
        try:
            for _ in range(_READ_BATCH):
                before = self.events
                rc = c.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None or self.events == before:
                    break
        except Exception as exc:
            # A callback raised inside paho: its packet state cannot be trusted now.
            log.exception("MQTT client %r: error while reading; dropping the connection", self.client_id)
            self.broken(exc)
            return
        self.kick()
        wire = self.wire
        if wire is not None and wire.has_input and self._sock is not None:
            # The kernel has nothing more to say, so no readable event will come for these.
            self.loop.call_soon(self._readable)

    def _writable(self) -> None:
        c = self._client
        try:
            c.loop_write()
        except Exception as exc:
            log.exception("MQTT client %r: error while writing; dropping the connection", self.client_id)
            self.broken(exc)
            return
        if self._sock is not None and self._writing and not c.want_write():
            self.loop.remove_writer(self._sock)
            self._writing = False

    def kick(self) -> None:
        """Watch for writability while paho holds bytes it could not write (no wire)."""
        if self._sock is not None and not self._writing and self._client.want_write():
            self.loop.add_writer(self._sock, self._writable)
            self._writing = True

    def _tick(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        try:
            self._client.loop_misc()
        except Exception as exc:
            log.exception("MQTT client %r: keep-alive failed", self.client_id)
            self.broken(exc)
            return
        self.kick()
        if self._sock is not None:
            self._misc = self.loop.call_later(_MISC_INTERVAL, self._tick)

    def broken(self, exc: BaseException) -> None:
        """The socket failed under paho's feet: close it and report the loss."""
        was = self.connected
        self._drop_socket()
        if was and not self.closing:
            log.debug("MQTT client %r: socket error %r", self.client_id, exc)
            self._lost(ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"))

    # -- paho callbacks (run on the loop, inside loop_read/loop_write) --------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self.events += 1
        fut = self._connack
        if reason.is_failure:
            if fut is not None and not fut.done():
                fut.set_exception(self.backend.refused(reason))
            return
        self.connected = True
        self.server_receive_maximum = getattr(properties, "ReceiveMaximum", 65535)
        if self.on_connected is not None:
            self.on_connected()
        if fut is not None and not fut.done():
            fut.set_result(bool(flags.session_present))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self.events += 1
        was = self.connected
        self.connected = False
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_exception(
                BrokerConnectionError(
                    f"the MQTT broker at {self.backend.where} closed the connection before "
                    f"accepting it: {reason}"
                )
            )
        if self.closing:
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            return
        if was:
            self._lost(reason)

    def _lost(self, reason: ReasonCode) -> None:
        self._fail_waiters(
            ConnectionLostError(f"MQTT connection to {self.backend.where} lost: {reason}")
        )
        if self.on_lost is not None:
            try:
                self.on_lost(reason)
            except Exception:
                log.exception("MQTT client %r: error handling a lost connection", self.client_id)

    def _fail_waiters(self, exc: PubSubError) -> None:
        for waiters in (self._acks, self._confirms):
            for fut in waiters.values():
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: a waiter that gave up must not log it
            waiters.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.events += 1
        self._message(client, userdata, message)  # type: ignore[misc]

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        self.events += 1
        fut = self._confirms.pop(mid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(reason)
        elif self.published is not None:
            self.published(mid, reason)

    def _on_acked(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        self.events += 1
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reasons)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self.loop_thread:
            self._detach(sock)
        else:
            self.loop.call_soon_threadsafe(self._detach, sock)

    # -- operations ---------------------------------------------------------------

    def _check(self) -> None:
        if not self.connected:
            raise ConnectionLostError(
                f"MQTT client {self.client_id!r} is not connected to {self.backend.where}"
            )

    def publish(
        self, topic: str, payload: bytes, qos: int, props: Properties | None
    ) -> mqtt.MQTTMessageInfo:
        """Hand one message to paho; the caller checked ``connected``."""
        for _ in range(8):
            info = self._client.publish(topic, payload, qos, False, props)
            # QUEUE_SIZE: the next message id is still in flight (ids wrap at 65,535).
            if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break
        self.kick()
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise PubSubError(f"paho refused a publish to {topic}: {mqtt.error_string(info.rc)}")
        return info

    async def publish_confirmed(
        self, topic: str, payload: bytes, qos: int, props: Properties | None
    ) -> ReasonCode:
        """Publish and wait for the broker's PUBACK/PUBCOMP reason code."""
        self._check()
        info = self.publish(topic, payload, qos, props)
        fut: asyncio.Future[ReasonCode] = self.loop.create_future()
        self._confirms[info.mid] = fut
        return await fut

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[ReasonCode]:
        self._check()
        rc, mid = self._client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in filters])
        return await self._await_ack(rc, mid, "SUBACK")

    async def unsubscribe(self, filters: list[str]) -> list[ReasonCode]:
        self._check()
        rc, mid = self._client.unsubscribe(filters)
        return await self._await_ack(rc, mid, "UNSUBACK")

    async def _await_ack(self, rc: MQTTErrorCode, mid: int | None, what: str) -> list[ReasonCode]:
        self.kick()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionLostError(
                f"MQTT client {self.client_id!r}: {mqtt.error_string(rc)} ({self.backend.where})"
            )
        fut: asyncio.Future[list[ReasonCode]] = self.loop.create_future()
        self._acks[mid] = fut
        try:
            async with asyncio.timeout(self.backend.connect_timeout):
                return await fut
        except TimeoutError:
            self._acks.pop(mid, None)
            raise BrokerConnectionError(
                f"the MQTT broker at {self.backend.where} sent no {what} within "
                f"{self.backend.connect_timeout}s"
            ) from None

    def ack(self, mid: int, qos: int) -> None:
        self._check()
        self._client.ack(mid, qos)
        self.kick()


# -- producers --------------------------------------------------------------------


class _Pending:
    """One publish the broker has not confirmed yet; kept to send it again if need be.

    ``qos`` is the QoS it went out with: 1 for a q2 message sent in the grace
    window after a reconnect (see ``_Publisher``).
    """

    __slots__ = ("backoff", "confirm", "payload", "producer", "props", "qos")

    def __init__(
        self, producer: MQTTProducer, payload: bytes, props: Properties | None, qos: int
    ) -> None:
        self.producer = producer
        self.payload = payload
        self.props = props
        self.qos = qos
        self.confirm: asyncio.Future[ReasonCode | None] | None = None
        self.backoff: Backoff | None = None


class _Publisher:
    """The backend's one publishing connection, reconnected by itself when lost.

    QoS 1/2 publishes in flight are limited to ``max_inflight`` (and the
    broker's Receive Maximum): ``send`` waits for a PUBACK beyond that.

    Mosquitto 2.0 does not restore shared subscriptions from its persistence
    file: for a moment after a broker restart, the consumers that are
    reconnecting have no subscription, and a message published then finds
    nobody (PUBACK "No matching subscribers") and is dropped.  So for
    ``UNROUTED_GRACE`` seconds after this connection comes back, a q1/q2
    message answered that way is published again (with backoff) until a
    subscriber takes it or the grace period ends.  Outside that window the
    answer is final, as MQTT means it: nobody subscribes to that topic.

    Only a PUBACK says so: Mosquitto routes a QoS 2 message on PUBREL and
    answers PUBREC "Success" either way (and paho ignores PUBREC reason codes).
    So in the grace window q2 messages are published at QoS 1, and ``send``
    returns once a subscriber took one (or the window closed).  The price: a
    connection lost again before that PUBACK resends it with DUP, which the
    broker may deliver twice.  A QoS 2 flow the restart itself interrupted is
    finished by paho at QoS 2 and is not covered.

    A broker that refuses the credentials stops the reconnecting (retrying
    cannot fix them): ``error`` keeps the ``AuthenticationError``, which
    ``send`` raises; ``ready`` tries once more and raises it again.
    """

    def __init__(self, backend: MQTTBackend) -> None:
        self.backend = backend
        # clean_start false even on the first connect: the id is fresh anyway, and
        # Mosquitto 2.0 persists only sessions that did not start clean.
        self.link = _Link(
            backend,
            naming.mqtt_producer_client_id(uuid.uuid4().hex[:16]),
            session_expiry=backend.session_expiry,
            clean_start=False,
            on_lost=self._lost,
        )
        self.link.published = self._published
        self.link.on_connected = self._connected
        self.pending: dict[int, _Pending] = {}
        self.inflight = 0
        self._qos0: set[int] = set()
        self._space: deque[asyncio.Future[None]] = deque()
        self._reconnecting: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._was_lost = False
        self._grace_until = 0.0
        self._grace_logged = False
        #: the broker refused the credentials on a reconnect; no more reconnecting.
        self.error: AuthenticationError | None = None

    @property
    def window(self) -> int:
        return max(1, min(self.backend.max_inflight, self.link.server_receive_maximum))

    async def open(self) -> None:
        await self.link.open()

    async def ready(self) -> None:
        """Return once connected; a reconnect in progress is waited for up to connect_timeout.

        After refused credentials this makes one new attempt (they may have been
        fixed on the broker) and raises its ``AuthenticationError`` again.
        """
        if self.link.connected:
            return
        task = self._reconnecting
        if task is None:
            task = self._start_reconnect()
        try:
            async with asyncio.timeout(self.backend.connect_timeout):
                await asyncio.shield(task)
        except TimeoutError:
            raise BrokerConnectionError(
                f"the MQTT broker at {self.backend.where} is not reachable; "
                "the backend keeps reconnecting in the background"
            ) from None
        if self.error is not None:
            raise self.error
        if not self.link.connected:
            raise ConnectionLostError(f"MQTT connection to {self.backend.where} lost again")

    def _start_reconnect(self) -> asyncio.Task[None]:
        self._reconnecting = self._loop.create_task(
            self._reconnect(), name=f"mqtt-reconnect:{self.backend.where}"
        )
        return self._reconnecting

    async def _reconnect(self) -> None:
        try:
            await retry(
                self.link.reconnect,
                retry_on=(BrokerConnectionError,),
                backoff=Backoff(base=0.05, cap=5.0),
                what=f"reconnect producers to the MQTT broker at {self.backend.where}",
            )
            self.error = None
        except AuthenticationError as exc:
            self.error = exc
            log.error("MQTT producer connection: %s; not reconnecting", exc)
            self._fail_confirms(exc)
        except ClosedError:
            pass  # the backend closed while reconnecting: nothing left to reconnect
        finally:
            self._reconnecting = None
            self._wake_space()
            for producer in {e.producer for e in self.pending.values()}:
                producer._wake()

    def _connected(self) -> None:
        if self._was_lost:
            self._grace_until = self._loop.time() + UNROUTED_GRACE
            self._grace_logged = False
        self._wake_space()

    def _lost(self, reason: ReasonCode) -> None:
        self._was_lost = True
        # paho drops QoS 0 packets that were not written yet: settle them here.
        for mid in self._qos0:
            entry = self.pending.pop(mid, None)
            if entry is not None:
                entry.producer._settled(None)
        self._qos0.clear()
        self._fail_confirms(ConnectionLostError(
            f"MQTT connection to {self.backend.where} lost before the broker confirmed a q2 "
            "message; paho resends it when the connection is back, so it may still arrive"
        ))
        for producer in {e.producer for e in self.pending.values()}:
            producer._wake()
        self._wake_space()
        if not self.backend.closed and not self.link.closing:
            log.warning("MQTT producer connection to %s lost (%s); reconnecting",
                        self.backend.where, reason)
            self._start_reconnect()

    def _fail_confirms(self, error: PubSubError) -> None:
        """Wake every q2 sender still waiting, with ``error``."""
        for entry in self.pending.values():
            self._confirm(entry, error)

    @staticmethod
    def _confirm(entry: _Pending, outcome: ReasonCode | PubSubError | None) -> None:
        """Settle a q2 sender's wait (a no-op for q0/q1 or when already settled)."""
        fut = entry.confirm
        if fut is None or fut.done():
            return
        if isinstance(outcome, PubSubError):
            fut.set_exception(outcome)
            fut.exception()  # retrieved: a cancelled sender must not log it
        else:
            fut.set_result(outcome)

    def _published(self, mid: int, reason: ReasonCode) -> None:
        entry = self.pending.pop(mid, None)
        if entry is None:
            return
        if mid in self._qos0:
            self._qos0.discard(mid)
        else:
            self.inflight -= 1
            space = self._space
            while space:
                fut = space.popleft()
                if not fut.done():
                    fut.set_result(None)
                    break
            if reason == _NO_MATCHING_SUBSCRIBERS and self._loop.time() < self._grace_until:
                self._unrouted(entry)
                return
        self._confirm(entry, reason)
        entry.producer._settled(None if entry.confirm is not None else reason)

    def _unrouted(self, entry: _Pending) -> None:
        if not self._grace_logged:
            self._grace_logged = True
            log.warning(
                "MQTT broker at %s reconnected and has no subscriber for %s yet; messages that "
                "find none are published again for up to %ss while consumers resubscribe",
                self.backend.where, entry.producer.topic, UNROUTED_GRACE,
            )
        if entry.backoff is None:
            entry.backoff = Backoff(base=0.05, cap=1.0)
        self._loop.call_later(entry.backoff.next_delay(), self._republish, entry)

    def _republish(self, entry: _Pending) -> None:
        link = self.link
        topic = entry.producer.topic
        if self.backend.closed or link.closing:
            self._abandon(entry, ClosedError(
                f"the MQTT backend closed before a subscriber took a message for {topic}"
            ))
            return
        if not link.connected:
            if self._loop.time() < self._grace_until or self._reconnecting is not None:
                self._unrouted(entry)
            else:
                self._abandon(entry, self.error or ConnectionLostError(
                    f"MQTT connection to {self.backend.where} lost before a subscriber took a "
                    f"message for {topic}"
                ))
            return
        try:
            info = link.publish(entry.producer.native, entry.payload, entry.qos, entry.props)
        except PubSubError as exc:
            self._abandon(entry, exc)
            return
        self.pending[info.mid] = entry
        self.inflight += 1

    def _abandon(self, entry: _Pending, error: PubSubError) -> None:
        """Give up on republishing a message nobody took: tell its sender, or its flush."""
        log.warning("MQTT message for %s not published again: %s", entry.producer.topic, error)
        self._confirm(entry, error)
        producer = entry.producer
        if entry.confirm is None and producer._error is None:
            producer._error = error
        producer._settled(None)

    def _wake_space(self) -> None:
        waiters, self._space = self._space, deque()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def send(
        self, producer: MQTTProducer, payload: bytes, props: Properties | None
    ) -> None:
        link = self.link
        while True:
            if not link.connected:
                if self.error is not None:
                    raise self.error
                raise ConnectionLostError(
                    f"MQTT connection to {self.backend.where} is down (reconnecting); "
                    f"message for {producer.topic} not sent"
                )
            wire = link.wire
            if wire is not None and wire.buffered > _WIRE_HIGH:
                await wire.drained()
                continue
            if producer.qos == 0 or self.inflight < self.window:
                break
            fut: asyncio.Future[None] = self._loop.create_future()
            self._space.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_one_more()
                raise
        qos = producer.qos
        if qos == 2 and self._loop.time() < self._grace_until:
            qos = 1  # only a PUBACK tells "no matching subscribers" (see the class doc)
        info = link.publish(producer.native, payload, qos, props)
        mid = info.mid
        if qos == 0:
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                raise ConnectionLostError(
                    f"MQTT connection to {self.backend.where} is down; q0 message for "
                    f"{producer.topic} dropped"
                )
            if not info.is_published():
                self._qos0.add(mid)
                self.pending[mid] = _Pending(producer, b"", None, 0)
                producer._outstanding += 1
            return
        entry = _Pending(producer, payload, props, qos)
        self.inflight += 1
        self.pending[mid] = entry
        producer._outstanding += 1
        if producer.qos == 2:
            entry.confirm = self._loop.create_future()
            reason = await entry.confirm
            if reason is not None and reason.is_failure:
                raise PubSubError(f"the MQTT broker refused a message for {producer.topic}: {reason}")

    def _wake_one_more(self) -> None:
        """A woken sender was cancelled: pass its turn on."""
        while self._space:
            fut = self._space.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def close(self) -> None:
        """Disconnect and end the session.

        The session exists for paho to resume an interrupted QoS 2 flow on a
        reconnect of this very client; its id is random, so once closed nobody
        ever resumes it, and keeping it would only leave it (and any message
        the broker holds for its PUBREL) on the broker until it expires.
        """
        task = self._reconnecting
        if self.pending:
            log.warning(
                "MQTT producer connection to %s closing with %d messages unconfirmed; they may "
                "not have reached the broker", self.backend.where, len(self.pending),
            )
        await self.link.close(end_session=True)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PubSubError):
                await task


class MQTTProducer:
    """Publishes one topic through the backend's shared connection."""

    def __init__(self, backend: MQTTBackend, topic: str, schema: type[Any] | None) -> None:
        t = naming.parse(topic)
        self.topic = topic
        self.native = naming.mqtt_topic(t)
        self.qos = _QOS[t.qos]
        self._schema = schema
        self._backend = backend
        self._outstanding = 0
        self._flushers: list[asyncio.Future[None]] = []
        self._error: PubSubError | None = None
        self._closed = False

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        """Publish one message.  ``key`` is ignored: MQTT has no keys.

        q0/q1 return once paho has the message; q2 once the broker completed
        the QoS 2 flow (PUBCOMP).
        """
        if self._closed:
            raise ClosedError(f"producer for {self.topic} is closed")
        payload = encode_payload(self._schema, message, self.topic)
        if len(payload) > MAX_PAYLOAD:
            raise MessageTooLargeError(
                f"message for {self.topic} is {len(payload):,} bytes; MQTT carries at most "
                f"{MAX_PAYLOAD:,} (Capabilities.max_message_size)"
            )
        props = _user_properties(check_properties(properties, self.topic), self.topic)
        publisher = self._backend.publisher
        if publisher is None:
            raise ClosedError(f"producer for {self.topic}: the MQTT backend is closed")
        await publisher.send(self, payload, props)

    def _settled(self, reason: ReasonCode | None) -> None:
        """One message finished; ``reason`` is a failure worth raising from ``flush``, or None."""
        self._outstanding -= 1
        if reason is not None and reason.is_failure and self._error is None:
            self._error = PubSubError(
                f"the MQTT broker refused a message for {self.topic}: {reason}"
            )
        if self._outstanding <= 0:
            self._wake()

    def _wake(self) -> None:
        flushers, self._flushers = self._flushers, []
        for f in flushers:
            if not f.done():
                f.set_result(None)

    async def flush(self) -> None:
        """Wait for the broker to confirm every message sent so far.

        Raises ``ConnectionLostError`` while the connection is down (the
        messages are kept and resent when it is back), and the broker's
        refusal of any of them.
        """
        loop = asyncio.get_running_loop()
        while self._outstanding > 0:
            publisher = self._backend.publisher
            if publisher is not None and publisher.error is not None:
                raise publisher.error
            if publisher is None or not publisher.link.connected:
                raise ConnectionLostError(
                    f"MQTT connection to {self._backend.where} is down with {self._outstanding} "
                    f"messages for {self.topic} unconfirmed; they are resent when it is back"
                )
            fut: asyncio.Future[None] = loop.create_future()
            self._flushers.append(fut)
            await fut
        publisher = self._backend.publisher
        if self.qos == 0 and publisher is not None and publisher.link.wire is not None:
            await publisher.link.wire.drained(empty=True)  # q0 has no PUBACK: the bytes are out
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def close(self) -> None:
        """Flush, then release the producer.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._backend._producers.discard(self)
        await self.flush()

    def __repr__(self) -> str:
        return f"<MQTTProducer topic={self.topic!r} qos={self.qos} unconfirmed={self._outstanding}>"


# -- consumers --------------------------------------------------------------------


class _Delivery:
    """The broker-side identity of one received message: its packet id and QoS.

    ``delivered``: ``receive`` returned it (since it last entered the local
    queue).  Only such a message counts one more delivery when handed back; a
    prefetched one the application never saw does not.
    """

    __slots__ = ("consumer", "delivered", "mid", "qos")

    def __init__(self, consumer: MQTTConsumer, mid: int, qos: int) -> None:
        self.consumer = consumer
        self.mid = mid
        self.qos = qos
        self.delivered = False


class MQTTConsumer:
    """One member of a shared subscription, on its own client and session (see the module doc)."""

    def __init__(
        self,
        backend: MQTTBackend,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        prefetch: int,
        ephemeral: bool = False,
    ) -> None:
        t = naming.parse(topic)
        self.topic = topic
        self.subscription = subscription
        self._backend = backend
        self._schema = schema
        self._qos = _QOS[t.qos]
        self._prefetch = prefetch
        self._ephemeral = ephemeral and bool(self._qos)  # q0 sessions are throwaway anyway
        self._filters = [naming.mqtt_shared_filter(t, subscription)]
        self._redelivery_topic = ""
        if self._qos:
            self._redelivery_topic = naming.mqtt_redelivery_topic(t, subscription)
            self._filters.append(naming.mqtt_redelivery_filter(t, subscription))
        self._key: _SlotKey = (backend.host, backend.port, t.identity, subscription)
        self._slot: int | None = None
        self._slot_released = False
        self._link: _Link | None = None
        self._buffer: deque[BaseMessage] = deque()
        self._unacked: dict[_Delivery, BaseMessage] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._state = _OPEN
        self._error: PubSubError | None = None
        self._done: asyncio.Event | None = None
        self._arrivals = 0
        #: nacks whose copy is being published (see ``negative_acknowledge``).
        self._nacking: dict[_Delivery, asyncio.Task[None]] = {}
        #: QoS 1 publishes of this consumer's own in flight, up to the broker's Receive Maximum.
        self._publishing: asyncio.Semaphore | None = None

    @property
    def slot(self) -> int | None:
        """The durable-session slot this consumer holds (None for q0)."""
        return self._slot

    async def _open(self) -> None:
        b = self._backend
        if self._qos:
            self._slot = _SLOTS.acquire(self._key)
            client_id = naming.mqtt_client_id(self.topic, self.subscription, self._slot)
            expiry, clean = b.session_expiry, False
            if self._ephemeral:
                # Discarded by the broker the moment the connection ends.
                expiry, clean = 0, True
        else:
            client_id = naming.mqtt_client_id(self.topic, self.subscription, uuid.uuid4().hex[:16])
            expiry, clean = 0, True
        link = _Link(
            b,
            client_id,
            session_expiry=expiry,
            clean_start=clean,
            receive_maximum=self._prefetch,
            on_message=self._on_message,
            on_lost=self._on_lost,
        )
        self._link = link
        try:
            await link.open()
            self._publishing = asyncio.Semaphore(max(1, link.server_receive_maximum))
            reasons = await link.subscribe([(f, min(self._qos, 1)) for f in self._filters])
            for f, reason in zip(self._filters, reasons, strict=False):
                if reason.is_failure:
                    raise b.subscribe_refused(f, reason)
        except BaseException:
            with contextlib.suppress(Exception):
                await link.close()
            self._release()
            self._state = _CLOSED
            raise

    def _release(self) -> None:
        """Give the slot back, once: a lost connection and the close after it both
        release, and by then another consumer may hold the same slot number."""
        if self._slot is not None and not self._slot_released:
            self._slot_released = True
            _SLOTS.release(self._key, self._slot)
        self._backend._consumers.discard(self)

    # -- paho callbacks (on the loop, inside loop_read) ------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        self._arrivals += 1
        redeliveries = 1 if m.dup else 0
        props: dict[str, str] = {}
        mp = m.properties
        if mp is not None and hasattr(mp, "UserProperty"):
            for k, v in mp.UserProperty:
                props[k] = v
            carried = props.pop(REDELIVERY_PROPERTY, None)
            if carried is not None:
                try:
                    redeliveries += max(0, int(carried))
                except ValueError:
                    # Not ours (the property is reserved): the count it should carry is unknown.
                    log.warning(
                        "consumer %r on %s: message with a malformed %s property %r; its "
                        "redelivery count restarts at %d", self.subscription, self.topic,
                        REDELIVERY_PROPERTY, carried[:40], redeliveries,
                    )
        h = _Delivery(self, m.mid, m.qos)
        payload = m.payload
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        msg = BaseMessage(payload, props, self.topic, self._schema, redeliveries, h)
        self._unacked[h] = msg
        self._buffer.append(msg)
        self._wake_one()

    def _on_lost(self, reason: ReasonCode) -> None:
        where = self._backend.where
        why = str(reason)
        if self._slot is not None:
            if reason == _SESSION_TAKEN_OVER:
                _SLOTS.lost(self._key, self._slot, TAKEOVER_LIMIT)
                why = (f"another client took over session slot {self._slot}: a consumer of the "
                       "same subscription in another process")
            else:
                # Mosquitto 2.0 closes a taken-over connection without saying so.
                _SLOTS.lost(self._key, self._slot)
                why = (f"{reason}: a network failure, a broker restart, or another client "
                       f"taking over session slot {self._slot}")
        self._error = ConnectionLostError(
            f"consumer {self.subscription!r} on {self.topic}: MQTT connection to {where} lost "
            f"({why}); its unacked messages stay in the session and are delivered again"
        )
        if self._state == _OPEN:
            self._state = _LOST
            self._buffer.clear()
            self._unacked.clear()
            self._release()
        self._wake_all()

    # -- waiting ---------------------------------------------------------------------

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, deque()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _not_open(self) -> PubSubError:
        if self._state == _LOST and self._error is not None:
            return self._error
        return ClosedError(f"consumer {self.subscription!r} on {self.topic} is closed")

    # -- the consumer API ----------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        """The next message; ``PubSubTimeoutError`` after ``timeout`` seconds."""
        loop: asyncio.AbstractEventLoop | None = None
        deadline = None
        while True:
            if self._state != _OPEN:
                raise self._not_open()
            if self._buffer:
                msg = self._buffer.popleft()
                msg.handle.delivered = True
                return msg
            if loop is None:
                loop = asyncio.get_running_loop()
                if timeout is not None:
                    deadline = loop.time() + timeout
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                if deadline is None:
                    await fut
                else:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(left):
                        await fut
            except TimeoutError:
                raise PubSubTimeoutError(
                    f"no message on {self.topic} (subscription {self.subscription!r}) "
                    f"within {timeout}s"
                ) from None
            finally:
                if not fut.done():
                    fut.cancel()

    def _delivery(self, message: Message) -> _Delivery:
        h = getattr(message, "handle", None)
        if not isinstance(h, _Delivery) or h.consumer is not self:
            raise ConfigurationError(
                f"message {message!r} was not received by consumer {self.subscription!r} on "
                f"{self.topic}; settle it on the consumer that received it"
            )
        return h

    async def acknowledge(self, message: Message) -> None:
        """PUBACK this one message.  Acking it again is a no-op."""
        h = self._delivery(message)
        if self._state not in (_OPEN, _CLOSING) or self._link is None or not self._link.connected:
            raise self._not_open()
        if self._unacked.pop(h, None) is None:
            return
        if h.qos:
            self._link.ack(h.mid, h.qos)

    async def negative_acknowledge(self, message: Message) -> None:
        """Deliver this message again, with ``redelivery_count`` + 1.

        q1/q2: a copy carrying the new count goes to the subscription's
        redelivery topic, and the original is acknowledged once the broker
        confirmed the copy.  Kept only in memory, the count would restart
        after a lost connection or a reopened slot, and a message nacked
        every time could cycle forever below the dead-letter limit.  The copy
        may reach any consumer of the subscription.  q0, and a copy the broker
        does not take: back on the local queue, its PUBACK withheld until the
        final ack.
        """
        h = self._delivery(message)
        if self._state != _OPEN:
            if self._state == _CLOSING:
                return  # the closing consumer hands it back or leaves it in its session
            raise self._not_open()
        current = self._unacked.get(h)
        if current is None or h in self._nacking:
            return
        count = current.redelivery_count + 1
        link = self._link
        if not self._redelivery_topic or link is None:
            self._requeue(h, current, count)
            return
        # A task, so that a cancelled caller cannot leave the copy half-settled.
        task = asyncio.get_running_loop().create_task(self._pass_on(link, h, current, count))
        self._nacking[h] = task
        await asyncio.shield(task)

    async def _pass_on(self, link: _Link, h: _Delivery, msg: BaseMessage, count: int) -> None:
        """Publish a nacked message's copy, then PUBACK the original; or requeue it locally."""
        why: str
        try:
            props = _user_properties(msg.properties(), self.topic, count)
            assert self._publishing is not None
            async with asyncio.timeout(self._backend.connect_timeout), self._publishing:
                reason = await link.publish_confirmed(self._redelivery_topic, msg.data(), 1, props)
            if not reason.is_failure and reason != _NO_MATCHING_SUBSCRIBERS:
                if self._unacked.pop(h, None) is not None and link.connected:
                    link.ack(h.mid, h.qos)
                return
            why = f"the broker answered {reason}"
        except (ConnectionLostError, ClosedError):
            return  # the original stays in the session and comes back from there
        except TimeoutError:
            why = f"no PUBACK within {self._backend.connect_timeout}s"
        except PubSubError as exc:
            why = str(exc)
        finally:
            self._nacking.pop(h, None)
        log.warning(
            "consumer %r on %s: a nacked message's copy was not published (%s); redelivering "
            "it from memory, where its count does not survive a lost connection",
            self.subscription, self.topic, why,
        )
        self._requeue(h, msg, count)

    def _requeue(self, h: _Delivery, msg: BaseMessage, count: int) -> None:
        """Put a nacked message back at the end of the local queue with ``count``."""
        if self._state != _OPEN or h not in self._unacked:
            return  # closing hands it back; a lost connection leaves it in the session
        again = BaseMessage(msg.data(), msg.properties(), self.topic, self._schema, count, h)
        h.delivered = False
        self._unacked[h] = again
        self._buffer.append(again)
        self._wake_one()

    async def close(self) -> None:
        """Release the consumer; unacked messages return to the subscription.  Idempotent.

        Slot 0 (and q0) only disconnect; other slots hand their messages back
        and end their session (see the module doc).
        """
        await self._finish(unsubscribe=False)

    async def unsubscribe(self) -> None:
        """Delete the durable subscription and its backlog, then close.

        Ends this consumer's session and every other session of the
        subscription that no consumer of this process holds (slot 0 and
        sessions left by consumers that did not close).
        """
        if self._state != _OPEN:
            raise self._not_open()
        await self._finish(unsubscribe=True)
        if self._qos and not self._ephemeral:
            await self._backend._end_sessions(self.topic, self.subscription)

    async def _finish(self, *, unsubscribe: bool) -> None:
        if self._state in (_CLOSING, _CLOSED):
            if self._done is not None:
                await self._done.wait()
            return
        if self._state == _LOST:
            self._state = _CLOSED
            return
        self._state = _CLOSING
        self._done = asyncio.Event()
        self._wake_all()
        link = self._link
        try:
            if self._nacking:
                # Settle them first: a copy confirmed after the close would find
                # its original handed back too (or its session ended).
                await asyncio.wait(list(self._nacking.values()))
            if link is None or not link.connected:
                pass
            elif unsubscribe:
                with contextlib.suppress(PubSubError):
                    await link.unsubscribe(self._filters)
                await link.close(end_session=True)
            elif self._ephemeral:
                await link.close()  # session expiry 0: the broker drops it now
            elif self._qos and self._slot:
                await self._hand_over(link)
            else:
                await link.close(end_session=not self._qos)
        finally:
            if link is not None and not link.closing:
                await link.close()
            self._state = _CLOSED
            self._buffer.clear()
            self._unacked.clear()
            self._release()
            self._done.set()

    async def _hand_over(self, link: _Link) -> None:
        """Give every message this session holds back to the subscription, then end it."""
        props_of = _user_properties
        try:
            async with asyncio.timeout(HANDOVER_TIMEOUT):
                await link.unsubscribe(self._filters)
                while True:
                    held = list(self._unacked.items())[: link.server_receive_maximum]
                    self._buffer.clear()
                    if held:
                        # At most the broker's Receive Maximum in flight at once.
                        reasons = await asyncio.gather(*(
                            link.publish_confirmed(
                                self._redelivery_topic,
                                msg.data(),
                                1,
                                props_of(
                                    msg.properties(),
                                    self.topic,
                                    msg.redelivery_count + (1 if h.delivered else 0),
                                ),
                            )
                            for h, msg in held
                        ))
                        kept = False
                        for (h, _), reason in zip(held, reasons, strict=True):
                            if reason.is_failure or reason == _NO_MATCHING_SUBSCRIBERS:
                                kept = True
                            elif self._unacked.pop(h, None) is not None:
                                link.ack(h.mid, h.qos)
                        if kept:
                            # Nobody else holds the subscription: this session stays its anchor.
                            await link.subscribe([(f, 1) for f in self._filters])
                            log.info(
                                "consumer %r on %s: no other session holds the subscription; "
                                "keeping slot %s's session", self.subscription, self.topic, self._slot,
                            )
                            await link.close()
                            return
                    seen = self._arrivals
                    # Answered after whatever the acks above released: a quiet answer
                    # with nothing held means the session is empty.
                    await link.unsubscribe(self._filters)
                    if self._arrivals == seen and not self._unacked:
                        break
                await link.close(end_session=True)
        except (TimeoutError, PubSubError) as exc:
            log.warning(
                "consumer %r on %s: handing messages back failed (%s); slot %s's session keeps "
                "them for the next consumer", self.subscription, self.topic, exc, self._slot,
            )
            if not link.closing:
                await link.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return iterate_messages(self)

    def __repr__(self) -> str:
        return (
            f"<MQTTConsumer topic={self.topic!r} subscription={self.subscription!r} "
            f"slot={self._slot} state={self._state} unacked={len(self._unacked)}>"
        )


# -- the backend ---------------------------------------------------------------------


class MQTTBackend:
    """MQTT 5 through paho-mqtt; see the module docstring for the semantics."""

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
    ) -> None:
        if not isinstance(host, str) or not host or any(c in host for c in "/@ "):
            raise ConfigurationError(
                f"--mqtt-host must be a host name or address (no URL; the port is --mqtt-port, "
                f"credentials --mqtt-username/--mqtt-password), got {shown(host)}"
            )
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"--mqtt-port must be 1-65535, got {shown(port)}")
        if not isinstance(session_expiry, int) or not 0 <= session_expiry <= _SESSION_EXPIRY_MAX:
            raise ConfigurationError(
                f"--mqtt-session-expiry must be 0-{_SESSION_EXPIRY_MAX} seconds, got {shown(session_expiry)}"
            )
        if not isinstance(max_inflight, int) or not 0 < max_inflight <= 65535:
            raise ConfigurationError(f"--mqtt-max-inflight must be 1-65535, got {shown(max_inflight)}")
        if not isinstance(keepalive, int) or not 0 <= keepalive <= 65535:
            raise ConfigurationError(f"--mqtt-keepalive must be 0-65535 seconds, got {shown(keepalive)}")
        if not isinstance(connect_timeout, (int, float)) or connect_timeout <= 0:
            raise ConfigurationError(
                f"--mqtt-connect-timeout must be a positive number of seconds, got {shown(connect_timeout)}"
            )
        if password is not None and username is None:
            raise ConfigurationError("--mqtt-password is set but --mqtt-username is not; set both")
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
        return f"<MQTTBackend {self.where}{user} closed={self.closed}>"

    # -- errors a person can act on --------------------------------------------------

    def unreachable(self, exc: BaseException) -> BrokerConnectionError:
        if isinstance(exc, ConnectionRefusedError):
            what = "connection refused"
        elif isinstance(exc, socket.gaierror):
            what = f"cannot resolve host {self.host!r}"
        elif isinstance(exc, TimeoutError):
            what = f"no answer within {self.connect_timeout}s"
        else:
            what = f"{type(exc).__name__}: {exc}"
        return BrokerConnectionError(
            f"cannot reach the MQTT broker at {self.where} ({what}); check --mqtt-host and "
            "--mqtt-port (MQTT_HOST, MQTT_PORT) and that the broker is running "
            "(mosquitto -d -c /etc/mosquitto/mosquitto.conf)"
        )

    def refused(self, reason: ReasonCode) -> PubSubError:
        if reason.value in _AUTH_FAILURES:
            user = "anonymous" if self.username is None else f"user {self.username!r}"
            return AuthenticationError(
                f"the MQTT broker at {self.where} refused the credentials ({user}): {reason}; "
                "check --mqtt-username and --mqtt-password (MQTT_USERNAME, MQTT_PASSWORD)"
            )
        return BrokerConnectionError(
            f"the MQTT broker at {self.where} refused the connection: {reason}"
        )

    def subscribe_refused(self, topic_filter: str, reason: ReasonCode) -> PubSubError:
        if reason.value == _SHARED_NOT_SUPPORTED:
            return UnsupportedError(
                f"the MQTT broker at {self.where} does not support shared subscriptions "
                f"({topic_filter}); the MQTT backend needs an MQTT 5 broker that does"
            )
        if reason.value in _AUTH_FAILURES:
            return AuthenticationError(
                f"the MQTT broker at {self.where} does not let this user subscribe to "
                f"{topic_filter}: {reason}; check the broker's ACL"
            )
        return BrokerConnectionError(
            f"the MQTT broker at {self.where} refused the subscription {topic_filter}: {reason}"
        )

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
        module docstring).
        """
        naming.mqtt_shared_filter(topic, subscription)
        if initial_position not in ("earliest", "latest"):
            raise ConfigurationError(
                f"consumer {subscription!r} on {topic}: initial_position must be 'earliest' or "
                f"'latest', got {shown(initial_position)}"
            )
        if consumer_type != "shared":
            raise UnsupportedError(
                f"consumer {subscription!r} on {topic}: the MQTT backend gives only 'shared' "
                f"subscriptions (MQTT shared subscriptions), not {shown(consumer_type)}"
            )
        prefetch = opts.get("prefetch", DEFAULT_PREFETCH)
        if prefetch is None:
            prefetch = DEFAULT_PREFETCH
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 < prefetch <= 65535:
            raise ConfigurationError(
                f"consumer {subscription!r} on {topic}: prefetch must be 1-65535 (MQTT Receive "
                f"Maximum), got {shown(prefetch)}"
            )
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

    async def _probe(self, topic: str, subscription: str, slot: int, *, end: bool,
                     subscribe: bool = False) -> bool:
        """Connect as ``slot``'s session; whether it existed.  ``end`` ends it afterwards."""
        link = _Link(
            self,
            naming.mqtt_client_id(topic, subscription, slot),
            session_expiry=self.session_expiry,
            clean_start=False,
        )
        try:
            present = await link.open()
            if subscribe:
                t = naming.parse(topic)
                filters = [naming.mqtt_shared_filter(t, subscription)]
                if _QOS[t.qos]:
                    filters.append(naming.mqtt_redelivery_filter(t, subscription))
                for f, reason in zip(
                    filters, await link.subscribe([(f, 1) for f in filters]), strict=False
                ):
                    if reason.is_failure:
                        raise self.subscribe_refused(f, reason)
            await link.close(end_session=end or not (present or subscribe))
            return present
        finally:
            if not link.closing:
                await link.close()

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Create the subscription's slot-0 session, subscribed, so that messages wait for it."""
        naming.mqtt_shared_filter(topic, subscription)
        self._check_open()
        if 0 in _SLOTS.held(self._key(topic, subscription)):
            return
        await self._probe(topic, subscription, 0, end=False, subscribe=True)

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        """Same as ``create_queue``: subscribing again is harmless in MQTT."""
        await self.create_queue(topic, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        """Whether the subscription's slot-0 session exists (held here, or on the broker)."""
        naming.mqtt_shared_filter(topic, subscription)
        self._check_open()
        if _SLOTS.held(self._key(topic, subscription)):
            return True
        return await self._probe(topic, subscription, 0, end=False)

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """End the subscription's sessions; without ``subscription``, those this process used."""
        self._check_open()
        if subscription is None:
            t = naming.parse(topic)
            for sub in _SLOTS.subscriptions(self.host, self.port, t.identity):
                await self._end_sessions(topic, sub)
            return
        naming.mqtt_shared_filter(topic, subscription)
        await self._end_sessions(topic, subscription)

    async def _end_sessions(self, topic: str, subscription: str) -> None:
        """End every session of the subscription that no consumer of this process holds.

        Slots are taken lowest first, so sessions are looked for up to the
        highest slot this process used and then until one is missing.
        """
        key = self._key(topic, subscription)
        limit = _SLOTS.highest(key)
        held = _SLOTS.held(key)
        slot = 0
        while True:
            if slot not in held:
                present = await self._probe(topic, subscription, slot, end=True)
                if slot > limit and not present:
                    return
            elif slot > limit:
                return
            slot += 1

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
