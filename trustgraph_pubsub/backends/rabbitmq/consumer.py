"""``RabbitMQConsumer``: consumes one subscription queue on its own channel,
and ``_split_headers``, which reads a delivery's headers into user properties
and the redelivery count (see the package docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from trustgraph_schema.topic import Topic

from ...backend import BaseMessage, Message, iterate_messages
from ...errors import (
    BrokerConnectionError,
    ClosedError,
    ConnectionLostError,
    PubSubError,
    PubSubTimeoutError,
)
from .config import _YIELD_EVERY
from .connection import _Channel, _set_exception
from .errors import _is_connection_error, _reason

if TYPE_CHECKING:
    from . import RabbitMQBackend

log = logging.getLogger(__name__)

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
