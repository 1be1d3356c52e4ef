"""``Producer``: a backend producer that survives a lost connection.

A send that fails with ``ConnectionLostError`` or ``BrokerConnectionError``
recreates the backend producer (one recreation however many sends failed
together) and sends again, with jittered backoff, until ``send_deadline``
seconds have passed; then the last error is raised.  Bad input
(``TypeError``, ``MessageTooLargeError``, ``BadTopicError`` ...) is raised at
once: retrying cannot fix it.

What a broker client had accepted but not yet written when the connection
dropped belongs to the backend: a backend that keeps sends in flight reports
their loss from ``send``/``flush`` so that they are resent here or raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from .backend import BackendProducer, PubSubBackend
from .errors import BrokerConnectionError, ClosedError
from .metrics import Metrics, default_metrics
from .retry import Backoff, retry

__all__ = ["Producer"]


class Producer:
    """Send messages of ``schema`` (None: raw bytes) to ``topic``.

    ``opts`` go to ``backend.create_producer`` (for example
    ``latency_bound=True`` for requests and replies).  ``start`` is optional:
    the first ``send`` starts the producer.
    """

    def __init__(
        self,
        backend: PubSubBackend,
        topic: str,
        schema: type[Any] | None,
        *,
        send_deadline: float = 30.0,
        backoff: Backoff | None = None,
        metrics: Metrics | None = None,
        **opts: Any,
    ) -> None:
        self.backend = backend
        self.topic = topic
        self.schema = schema
        self.send_deadline = send_deadline
        self._backoff = backoff or Backoff(base=0.05, cap=2.0)
        self._opts = opts
        self._bp: BackendProducer | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._metrics = (metrics or default_metrics()).bind_producer(
            topic, getattr(backend, "name", type(backend).__name__)
        )

    def _fresh_backoff(self) -> Backoff:
        """Each retrying send gets its own attempt count, with the configured shape."""
        b = self._backoff
        return Backoff(base=b.base, cap=b.cap, jitter=b.jitter)

    async def _current(self) -> BackendProducer:
        bp = self._bp
        if bp is not None:
            return bp
        async with self._lock:
            if self._closed:
                raise ClosedError(f"producer for {self.topic} is closed")
            if self._bp is None:
                self._bp = await self.backend.create_producer(self.topic, self.schema, **self._opts)
            return self._bp

    async def _discard(self, bp: BackendProducer) -> None:
        """Forget a broken backend producer (once, whoever notices first)."""
        if self._bp is bp:
            self._bp = None
            with contextlib.suppress(Exception):
                await bp.close()

    async def start(self) -> None:
        """Create the backend producer, retrying connection errors until ``send_deadline``."""
        if self._closed:
            raise ClosedError(f"producer for {self.topic} is closed")
        await retry(
            self._current,
            retry_on=(BrokerConnectionError,),
            deadline=self.send_deadline,
            backoff=self._fresh_backoff(),
            what=f"create producer for {self.topic}",
        )

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        if self._closed:
            raise ClosedError(f"producer for {self.topic} is closed; create a new one")
        bp = self._bp
        if bp is not None:
            try:
                await bp.send(message, properties, key=key)
                self._metrics.sent()
                return
            except BrokerConnectionError:
                await self._discard(bp)

        async def attempt() -> None:
            current = await self._current()
            try:
                await current.send(message, properties, key=key)
            except BrokerConnectionError:
                await self._discard(current)
                raise

        await retry(
            attempt,
            retry_on=(BrokerConnectionError,),
            deadline=self.send_deadline,
            backoff=self._fresh_backoff(),
            what=f"send to {self.topic}",
        )
        self._metrics.sent()

    async def flush(self) -> None:
        """Wait until everything sent so far is handed to the broker."""
        bp = self._bp
        if bp is not None:
            await bp.flush()

    async def close(self) -> None:
        """Flush and release the backend producer.  Idempotent.

        A flush that fails because the connection is gone is raised: the
        caller must know that messages may not have reached the broker.
        """
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            bp, self._bp = self._bp, None
        if bp is not None:
            await bp.close()

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Producer topic={self.topic!r} closed={self._closed}>"
