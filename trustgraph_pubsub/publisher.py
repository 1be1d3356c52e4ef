"""``Publisher``: fire-and-forget publishing through a bounded buffer.

``publish`` encodes the message in the caller (so a wrong type or an
oversized message is raised there, not lost in a background task), puts it in
a buffer of ``max_pending`` messages and returns; a background task sends the
buffer in order through a resilient ``Producer``.  A full buffer makes
``publish`` wait: back-pressure, never a dropped message.  ``close`` waits
until the buffer is sent, then flushes and closes.

If the broker stays unreachable past the producer's ``send_deadline``, the
background task logs an error and keeps retrying the same message: order is
kept and nothing is dropped; ``close`` then waits until the broker is back
(bound it with ``asyncio.timeout`` if that is not wanted).

A message the broker refuses for good after ``publish`` returned (an
authorisation or ACL refusal, a closed producer, a broker's deferred
rejection) cannot be retried and cannot be raised to a caller who has
moved on.  It is logged at ERROR, counted, and *surfaced*: the next
``flush()`` or ``close()`` raises ``DeliveryError`` carrying how many
messages were refused since the last such report (``refused`` tells it at
any time).  Surfacing was chosen over a dead-letter topic because the
refusal that hit the message (say, no right to publish) would likely hit
its dead-letter copy too, and because the caller who published is the one
who can act on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from .backend import PubSubBackend, check_properties, encode_payload
from .errors import (
    BrokerConnectionError,
    ClosedError,
    ConfigurationError,
    DeliveryError,
    MessageTooLargeError,
    PubSubError,
    PubSubTimeoutError,
)
from .lifecycle import Lifecycle
from .metrics import Metrics
from .producer import Producer
from .retry import Backoff

log = logging.getLogger(__name__)

__all__ = ["Publisher"]

_Item = tuple[bytes, dict[str, str], str | None]


class Publisher(Lifecycle):
    """Publish ``schema`` messages (None: bytes) to ``topic`` from a background task."""

    def __init__(
        self,
        backend: PubSubBackend,
        topic: str,
        schema: type[Any] | None,
        *,
        max_pending: int = 1000,
        metrics: Metrics | None = None,
        **opts: Any,
    ) -> None:
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError(
                f"publisher for {topic}: max_pending must be an int >= 1, got {max_pending!r}"
            )
        self.backend = backend
        self.topic = topic
        self.schema = schema
        self.max_pending = max_pending
        # The bytes are encoded in publish(), so the producer sends raw bytes.
        self._producer = Producer(backend, topic, None, metrics=metrics, **opts)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._start_lock = asyncio.Lock()
        #: messages refused since the last report, and the first refusal's error
        self._refused = 0
        self._refusal: BaseException | None = None

    async def start(self) -> None:
        """Open the producer and start the sender.  Idempotent."""
        if self._closing:
            raise ClosedError(f"publisher for {self.topic} is closed")
        async with self._start_lock:
            if self._task is not None:
                return
            await self._producer.start()
            self._task = asyncio.create_task(self._run(), name=f"publisher:{self.topic}")

    async def publish(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        """Queue one message; waits while the buffer is full."""
        if self._closing:
            raise ClosedError(f"publisher for {self.topic} is closed; create a new one")
        if self._task is None:
            await self.start()
        data = encode_payload(self.schema, message, self.topic)
        limit = self.backend.capabilities.max_message_size
        if len(data) > limit:
            raise MessageTooLargeError(
                f"message of {len(data)} bytes on {self.topic} exceeds the {self.backend.name} "
                f"backend's limit of {limit} bytes; send a reference to the data instead"
            )
        await self._queue.put((data, check_properties(properties, self.topic), key))

    @property
    def pending(self) -> int:
        """Messages buffered and not yet handed to the broker client."""
        return self._queue.qsize()

    @property
    def refused(self) -> int:
        """Messages refused since the last ``DeliveryError`` reported them."""
        return self._refused

    def _refuse(self, exc: BaseException, count: int) -> None:
        self._refused += count
        if self._refusal is None:
            self._refusal = exc
        log.error(
            "publisher for %s: %d message(s) refused by the broker and not sent: %s: %s",
            self.topic, count, type(exc).__name__, exc,
        )

    def _report(self) -> None:
        """Raise the refusals counted since the last report, once."""
        if self._refused:
            n, first = self._refused, self._refusal
            self._refused, self._refusal = 0, None
            raise DeliveryError(
                f"publisher for {self.topic}: {n} message(s) were refused by the broker after "
                f"publish() returned; the first: {type(first).__name__}: {first}",
                n,
            ) from first

    async def _run(self) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        while True:
            data, props, key = await self._queue.get()
            while True:
                try:
                    await self._producer.send(data, props, key=key)
                    backoff.reset()
                    break
                except (BrokerConnectionError, PubSubTimeoutError) as exc:
                    # A timeout is the broker not answering in time: as transient
                    # as a lost connection, so the message is sent again
                    # (at least once), never dropped.
                    log.error(
                        "publisher for %s cannot reach the broker (%s); %d messages waiting, "
                        "still retrying", self.topic, exc, self._queue.qsize() + 1,
                    )
                    await backoff.sleep()
                except Exception as exc:
                    # Not a connection error, so a retry cannot help: the broker
                    # refused this message (and any it ended with it).  Counted
                    # for flush()/close() to raise; the stream goes on.
                    extra = len(exc.unconfirmed) if isinstance(exc, PubSubError) else 0
                    self._refuse(exc, 1 + extra)
                    break
            self._queue.task_done()

    async def flush(self) -> None:
        """Wait until everything published so far is sent and confirmed.

        Raises ``DeliveryError`` when messages were refused since the last
        report (see the module docstring).
        """
        if self._task is not None:
            await self._queue.join()
            await self._flush_producer()
        self._report()

    async def _flush_producer(self) -> None:
        try:
            await self._producer.flush()
        except PubSubError as exc:
            if isinstance(exc, BrokerConnectionError) or not exc.unconfirmed:
                raise
            self._refuse(exc, len(exc.unconfirmed))

    async def close(self) -> None:
        """Send everything buffered, flush and close.  Idempotent.

        Raises ``DeliveryError`` when messages were refused since the last
        report, or could not be confirmed before closing.
        """
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            await asyncio.wait([self._task])
        try:
            await self._producer.close()
        except DeliveryError as exc:
            self._refuse(exc, exc.count)
        except PubSubError as exc:
            if isinstance(exc, BrokerConnectionError) or not exc.unconfirmed:
                raise
            self._refuse(exc, len(exc.unconfirmed))
        self._report()

    async def stop(self) -> None:
        """``close``: the name ``Lifecycle`` (and ``async with``) uses."""
        await self.close()

    def __repr__(self) -> str:
        return f"<Publisher topic={self.topic!r} pending={self.pending}>"
