"""``Subscriber``: one consumer, many waiters keyed by a correlation property.

Request/response and other correlated flows share one subscription: each
waiter registers a key (``subscribe(key)``) and gets an ``asyncio.Queue`` of
the messages whose ``correlation_property`` equals it, in arrival order.
A message nobody waits for (a reply that arrived after its caller gave up)
is acknowledged, dropped and counted in the ``dropped`` metric.

It runs on a ``Consumer``, so it reconnects after a lost connection and
dead-letters replies that do not decode.  Handing a message to its queue
counts as handling it: it is acknowledged then.

``ephemeral=True`` makes the subscription ephemeral (see ``Consumer``): the
broker deletes it when this subscriber stops or its process dies.  After a
lost connection it is recreated empty, so messages sent in between may be
missed (a waiter then times out).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .backend import Message, PubSubBackend
from .consumer import Consumer
from .lifecycle import Lifecycle
from .metrics import Metrics, default_metrics

log = logging.getLogger(__name__)

__all__ = ["Subscriber"]

#: handlers in flight; dispatching never waits, so this only overlaps acks.
_CONCURRENCY = 32


class Subscriber(Lifecycle):
    """Route messages on ``topic`` to per-key queues."""

    def __init__(
        self,
        backend: PubSubBackend,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        *,
        correlation_property: str = "id",
        metrics: Metrics | None = None,
        initial_position: str = "latest",
        ephemeral: bool = False,
    ) -> None:
        self.topic = topic
        self.subscription = subscription
        self.correlation_property = correlation_property
        #: a queue (every message for the key) or a future (the first one only)
        self._waiters: dict[str, asyncio.Queue[Message] | asyncio.Future[Message]] = {}
        metrics = metrics or default_metrics()
        self._consumer = Consumer(
            backend,
            topic,
            subscription,
            schema,
            self._dispatch,
            concurrency=_CONCURRENCY,
            initial_position=initial_position,
            metrics=metrics,
            ephemeral=ephemeral,
        )
        self._m = metrics.bind(topic, subscription, getattr(backend, "name", type(backend).__name__))
        self.dropped = 0

    def _dispatch(self, msg: Message) -> None:
        # A plain function (the Consumer awaits nothing for it), so each queue
        # sees its messages in arrival order, and no coroutine per message.
        key = msg.properties().get(self.correlation_property)
        waiter = self._waiters.get(key) if key is not None else None
        if waiter is None or (not isinstance(waiter, asyncio.Queue) and waiter.done()):
            self.dropped += 1
            self._m.dropped()
            log.debug(
                "no waiter for %s=%r on %s; dropped", self.correlation_property, key, self.topic
            )
            return
        if isinstance(waiter, asyncio.Queue):
            waiter.put_nowait(msg)
        else:
            waiter.set_result(msg)

    def subscribe(self, key: str) -> asyncio.Queue[Message]:
        """Register a waiter for ``key``; messages for it arrive in the returned queue."""
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._waiters[key] = queue
        return queue

    def expect(self, key: str) -> asyncio.Future[Message]:
        """Register a waiter for the first message for ``key``; later ones are dropped.

        Cheaper than ``subscribe`` for a single reply: no queue per request.
        """
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        return fut

    def unsubscribe(self, key: str) -> None:
        """Forget ``key``; later messages for it are dropped.  Idempotent."""
        self._waiters.pop(key, None)

    async def start(self) -> None:
        """Subscribe before returning, so no reply sent afterwards is missed."""
        await self._consumer.start()

    async def stop(self, *, unsubscribe: bool = False) -> None:
        """Stop; ``unsubscribe=True`` also deletes the subscription."""
        await self._consumer.stop(unsubscribe=unsubscribe)


    def __repr__(self) -> str:
        return (
            f"<Subscriber topic={self.topic!r} subscription={self.subscription!r} "
            f"waiters={len(self._waiters)}>"
        )
