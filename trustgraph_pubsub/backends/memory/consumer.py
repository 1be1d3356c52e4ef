"""``MemoryConsumer``: one consumer on a hub subscription, its receive queue and acks."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from trustgraph_schema.topic import Topic

from ...backend import BaseMessage, Message, iterate_messages
from ...errors import ClosedError, PubSubTimeoutError
from .config import DEFAULT_PREFETCH, _Pacer
from .hub import _Delivery, _Subscription

if TYPE_CHECKING:
    from . import MemoryBackend


def _live(fut: asyncio.Future[Any]) -> bool:
    """A receive still waiting on a running loop (the hub may outlive a test's loop)."""
    return not fut.done() and not fut.get_loop().is_closed()


class MemoryConsumer:
    """One consumer attached to a subscription of the hub."""

    def __init__(
        self,
        backend: MemoryBackend,
        topic: str,
        parsed: Topic,
        subscription: str,
        schema: type[Any] | None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        self.topic = topic
        self.subscription = subscription
        self._parsed = parsed
        self._schema = schema
        self._backend = backend
        self._hub = backend.hub
        self._sub: _Subscription | None = None
        self._unacked: dict[int, _Delivery] = {}
        self._prefetch = prefetch
        #: delivered to this consumer, not yet received (Pulsar's receiver queue)
        self._inbox: deque[_Delivery] = deque()
        self._waiters: deque[asyncio.Future[_Delivery]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # made outside a loop: no loop to outlive
            self._loop = asyncio.get_running_loop()
        self._error: Exception | None = None
        self._pacer = _Pacer()

    # -- called by the subscription ----------------------------------------

    def track(self, delivery: _Delivery) -> None:
        self._unacked[id(delivery)] = delivery

    def loop_closed(self) -> bool:
        return self._loop is not None and self._loop.is_closed()

    def has_room(self) -> bool:
        return len(self._inbox) < self._prefetch or bool(self._waiters)

    def deliver(self, delivery: _Delivery, *, front: bool = False) -> None:
        """Take a message: to a waiting receive, else into the receive queue."""
        while self._waiters:
            fut = self._waiters.popleft()
            if _live(fut):
                self.track(delivery)
                fut.set_result(delivery)
                return
        if front:
            self._inbox.appendleft(delivery)
        else:
            self._inbox.append(delivery)

    def _detach(self) -> _Subscription | None:
        """Leave the subscription, returning unacked messages to it."""
        sub, self._sub = self._sub, None
        self._hub._consumers.discard(self)
        self._backend._consumers.discard(self)
        if sub is None:
            return None
        if self in sub.consumers:
            sub.consumers.remove(self)
        pending = list(self._unacked.values())
        self._unacked.clear()
        held, self._inbox = list(self._inbox), deque()
        waiting, self._waiters = list(self._waiters), deque()
        if sub.consumers:
            sub.turn %= len(sub.consumers)
        for fut in waiting:
            if _live(fut):
                fut.set_exception(self._error or ClosedError(f"consumer on {self.topic} closed"))
        if sub.ephemeral and not sub.consumers:
            # Its last consumer is gone: so is the subscription, with what it held.
            if sub.topic.subscriptions.get(sub.name) is sub:
                del sub.topic.subscriptions[sub.name]
            sub.ready.clear()
            return sub
        # What it held unreceived goes back as it was; what it received and
        # did not ack comes again, counted.  Both go to the front, in order,
        # and to the next consumers in turn (a failover standby among them).
        for d in pending:
            d.redeliveries += 1
        sub.ready.extendleft(reversed(pending + held))
        sub.dispatch()
        return sub

    def _drop(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._detach()

    # -- the BackendConsumer API -------------------------------------------

    def _check(self) -> _Subscription:
        if self._error is not None:
            raise self._error
        assert self._sub is not None
        return self._sub

    def _message(self, delivery: _Delivery) -> BaseMessage:
        e = delivery.entry
        return BaseMessage(
            e.data, dict(e.properties), self.topic, self._schema, delivery.redeliveries, delivery
        )

    def receive_nowait(self) -> BaseMessage | None:
        """The next message of the receive queue, or None (``NowaitConsumer``)."""
        if not self._inbox or self._error is not None:
            return None
        sub = self._sub
        assert sub is not None
        delivery = self._inbox.popleft()
        self.track(delivery)
        sub.dispatch()  # room in the receive queue: the next in turn
        return self._message(delivery)

    async def receive(self, timeout: float | None = None) -> BaseMessage:  # noqa: ASYNC109 (contract)
        sub = self._check()
        if self._inbox:
            # Yield (now and then) before taking the message, never after: a
            # receive cancelled while it yields must not hold a message.
            await self._pacer.tick()
            msg = self.receive_nowait()
            if msg is not None:
                return msg
            sub = self._check()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Delivery] = loop.create_future()
        self._waiters.append(fut)
        sub.dispatch()
        timer = None
        if timeout is not None and not fut.done():
            timer = loop.call_later(timeout, self._expire, fut, timeout)
        try:
            delivery = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Handed to us just as we were cancelled: keep it, unreceived,
                # at the front of this consumer's queue.
                d = fut.result()
                if self._unacked.pop(id(d), None) is not None and self._sub is not None:
                    self.deliver(d, front=True)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            # A waiter that was handed a delivery is already gone; test before
            # removing (a failed deque.remove formats the repr of what it sought).
            if fut in self._waiters:
                self._waiters.remove(fut)
        if self._error is not None:
            # Dropped after the hand-over: _detach already returned it.
            raise self._error
        return self._message(delivery)

    def _expire(self, fut: asyncio.Future[_Delivery], timeout: float) -> None:
        if not fut.done():
            fut.set_exception(
                PubSubTimeoutError(
                    f"no message on {self.topic} (subscription {self.subscription!r}) "
                    f"within {timeout}s"
                )
            )
            if fut in self._waiters:
                self._waiters.remove(fut)

    def _delivery(self, message: Any) -> _Delivery:
        handle = getattr(message, "handle", None)
        if not isinstance(handle, _Delivery):
            raise TypeError(
                f"consumer on {self.topic} can only acknowledge messages it received, "
                f"got {type(message).__name__}"
            )
        return handle

    async def acknowledge(self, message: Any) -> None:
        self.acknowledge_nowait(message)

    def acknowledge_nowait(self, message: Any) -> None:
        """``acknowledge`` as a plain call (``NowaitConsumer``)."""
        delivery = self._delivery(message)
        self._check()
        self._unacked.pop(id(delivery), None)

    async def negative_acknowledge(self, message: Any) -> None:
        delivery = self._delivery(message)
        sub = self._check()
        if self._unacked.pop(id(delivery), None) is not None:
            sub.nacked(delivery)

    async def unsubscribe(self) -> None:
        sub = self._check()
        self._drop(ClosedError(f"consumer on {self.topic} unsubscribed"))
        topic = sub.topic
        if topic.subscriptions.get(sub.name) is sub:
            for other in list(sub.consumers):
                other._drop(
                    ClosedError(f"subscription {sub.name!r} on {self.topic} was unsubscribed")
                )
            del topic.subscriptions[sub.name]
            sub.ready.clear()

    async def close(self) -> None:
        if self._error is None:
            self._drop(ClosedError(f"consumer on {self.topic} is closed"))

    def __aiter__(self) -> AsyncIterator[Message]:
        return iterate_messages(self)

    def __repr__(self) -> str:
        return f"<MemoryConsumer topic={self.topic!r} subscription={self.subscription!r}>"
