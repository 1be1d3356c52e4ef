"""What becomes of a message the handler cannot take: nack it, or dead-letter it.

Points 1 and 3 of the package docstring: bytes that do not decode, and a
message over ``max_redeliveries``, go to the dead-letter topic; a handler
failure before that is nacked for redelivery.  ``_DeadLettering`` is a mixin
of ``Consumer``: the worker loop calls these as its own methods
(``self._failed(...)``), and the state they use (the dead-letter producer,
its lock and backoff) is set up in ``Consumer.__init__``.
"""

from __future__ import annotations

import asyncio
import logging

from ..backend import BackendConsumer, Message, PubSubBackend
from ..errors import MessageDecodeError, PubSubError
from ..metrics import BoundMetrics, Metrics
from ..producer import Producer
from ..retry import Backoff

#: the package's logger, ``trustgraph_pubsub.consumer``: one name for the consumer's records
log = logging.getLogger(__package__)

#: longest ``x-dlq-error`` value; a traceback-sized message is cut here.
DLQ_ERROR_MAX = 1000


class _DeadLettering:
    """``Consumer``'s handling of undecodable, failed and overdelivered messages."""

    backend: PubSubBackend
    topic: str
    subscription: str
    max_redeliveries: int
    dead_letter_topic: str
    _m: BoundMetrics
    _metrics_source: Metrics
    _dlq: Producer | None
    _dlq_lock: asyncio.Lock
    _dlq_backoff: Backoff

    async def _undecodable(self, bc: BackendConsumer, msg: Message, exc: MessageDecodeError) -> None:
        """Bytes that do not decode never will: dead-letter them at once."""
        self._m.error()
        log.warning(
            "undecodable message on %s (subscription %r): dead-lettering: %s",
            self.topic, self.subscription, exc,
        )
        await self._dead_letter(bc, msg, exc)

    async def _overdelivered(self, bc: BackendConsumer, msg: Message) -> None:
        """Delivered more often than any handler failure explains: earlier
        deliveries never settled it (the process crashed in its handler, say).
        Running the handler again could crash again: dead-letter it instead."""
        self._m.error()
        exc = PubSubError(
            f"redelivery count {msg.redelivery_count} is over max_redeliveries="
            f"{self.max_redeliveries}: earlier deliveries were never settled (its handler "
            "may crash the process)"
        )
        log.warning(
            "message on %s (subscription %r) %s; dead-lettering to %s",
            self.topic, self.subscription, exc, self.dead_letter_topic,
        )
        await self._dead_letter(bc, msg, exc)

    async def _failed(self, bc: BackendConsumer, msg: Message, exc: BaseException) -> None:
        """The handler raised: nack for redelivery, or dead-letter after the last one."""
        self._m.error()
        deliveries = msg.redelivery_count + 1
        if msg.redelivery_count >= self.max_redeliveries:
            log.warning(
                "handler for %s (subscription %r) failed on delivery %d: %s: %s; "
                "dead-lettering to %s",
                self.topic, self.subscription, deliveries, type(exc).__name__, exc,
                self.dead_letter_topic,
            )
            await self._dead_letter(bc, msg, exc)
        else:
            log.warning(
                "handler for %s (subscription %r) failed on delivery %d of %d: %s: %s",
                self.topic, self.subscription, deliveries, self.max_redeliveries + 1,
                type(exc).__name__, exc,
            )
            self._m.redelivered()
            await bc.negative_acknowledge(msg)

    async def _dlq_producer(self) -> Producer:
        async with self._dlq_lock:
            if self._dlq is None:
                self._dlq = Producer(
                    self.backend, self.dead_letter_topic, None, metrics=self._metrics_source
                )
            return self._dlq

    async def _dead_letter(self, bc: BackendConsumer, msg: Message, exc: BaseException) -> None:
        error = str(exc) or type(exc).__name__
        if len(error) > DLQ_ERROR_MAX:
            error = error[: DLQ_ERROR_MAX - 3] + "..."
        props = dict(msg.properties())
        props.update(
            {
                "x-dlq-error": error,
                "x-dlq-error-type": type(exc).__name__,
                "x-dlq-topic": self.topic,
                "x-dlq-subscription": self.subscription,
                "x-dlq-deliveries": str(msg.redelivery_count + 1),
            }
        )
        try:
            producer = await self._dlq_producer()
            await producer.send(msg.data(), props)
            await producer.flush()
        except Exception as dexc:
            # Back off before handing it back: a lasting failure (no right to
            # publish there, say) must not spin the message through the broker.
            delay = self._dlq_backoff.next_delay()
            log.error(
                "could not dead-letter a message from %s to %s (%s); nacking it in %.1fs",
                self.topic, self.dead_letter_topic, dexc, delay,
            )
            await asyncio.sleep(delay)
            await bc.negative_acknowledge(msg)
            return
        self._dlq_backoff.reset()
        self._m.dead_lettered()
        await bc.acknowledge(msg)
