"""The MQTT consumer: one member of a shared subscription on its own client and session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from ... import naming
from ...backend import BaseMessage, Message, iterate_messages
from ...errors import (
    ClosedError,
    ConfigurationError,
    ConnectionLostError,
    PubSubError,
    PubSubTimeoutError,
)
from .config import _QOS, HANDOVER_TIMEOUT, REDELIVERY_PROPERTY, TAKEOVER_LIMIT
from .connection import _Link
from .errors import _NO_MATCHING_SUBSCRIBERS, _SESSION_TAKEN_OVER, subscribe_refused
from .lifecycle import _end_sessions
from .packets import _user_properties
from .sessions import _SLOTS, _SlotKey

if TYPE_CHECKING:
    from . import MQTTBackend

log = logging.getLogger(__name__)

_OPEN, _CLOSING, _CLOSED, _LOST = "open", "closing", "closed", "lost"


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
    """One member of a shared subscription, on its own client and session (see the package doc)."""

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
                    raise subscribe_refused(b, f, reason)
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
        and end their session (see the package doc).
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
            await _end_sessions(self._backend, self.topic, self.subscription)

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

