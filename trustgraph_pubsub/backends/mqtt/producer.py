"""The MQTT producer, and the backend's one publishing connection (``_Publisher``) it sends on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ... import naming
from ...backend import check_properties, encode_payload
from ...errors import (
    AuthenticationError,
    BrokerConnectionError,
    ClosedError,
    ConnectionLostError,
    MessageTooLargeError,
    PubSubError,
)
from ...retry import Backoff, retry
from .config import _QOS, _WIRE_HIGH, MAX_PAYLOAD, UNROUTED_GRACE
from .connection import _Link
from .errors import _NO_MATCHING_SUBSCRIBERS
from .packets import _user_properties

if TYPE_CHECKING:
    from . import MQTTBackend

log = logging.getLogger(__name__)


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

