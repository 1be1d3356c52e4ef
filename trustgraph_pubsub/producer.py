"""``Producer``: a backend producer that survives a lost connection.

A send that fails with ``ConnectionLostError`` or ``BrokerConnectionError``
recreates the backend producer (one recreation however many sends failed
together) and sends again, with jittered backoff, until ``send_deadline``
seconds have passed; then the last error is raised.  Bad input
(``TypeError``, ``MessageTooLargeError``, ``BadTopicError`` ...) is raised at
once: retrying cannot fix it.

Nothing that ``send`` accepted is dropped without a word.  Backends that keep
sends in flight (Pulsar, Kafka) report the messages a failure ended in the
error's ``unconfirmed``.  After a lost connection they are kept here and
sent again, oldest first, on the new backend producer before anything else,
and flushed there before it is used (at least once: the broker may have
kept some of them, so duplicates are possible, losses are not).  After a
refusal that retrying cannot fix (an authorisation error, say) the error is
raised to the caller with the count in its text and the messages in its
``unconfirmed``.  Messages still unsent when ``close`` gives up are reported
by a ``DeliveryError`` carrying their number.

Messages are encoded here and the backend producer carries bytes, so that a
message kept for resending needs no schema.  Where the backend producer can
take a message with a plain call (``NowaitProducer``, Pulsar), ``send`` tries
that first and awaits the backend only when it declines.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .backend import BackendProducer, PubSubBackend, encode_payload
from .errors import BrokerConnectionError, ClosedError, DeliveryError, Outgoing, PubSubError
from .lifecycle import Lifecycle
from .metrics import Metrics, default_metrics
from .retry import Backoff, retry

log = logging.getLogger(__name__)

__all__ = ["Producer"]


class Producer(Lifecycle):
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
        #: ``_bp``'s plain send (``NowaitProducer``), if it has one; set and cleared with it
        self._nowait: Callable[[bytes, Mapping[str, str] | None, str | None], bool] | None = None
        #: messages a failed backend producer left unconfirmed, to send again first
        self._resend: deque[Outgoing] = deque()
        self._lock = asyncio.Lock()
        self._closed = False
        self._metrics = (metrics or default_metrics()).bind_producer(
            topic, getattr(backend, "name", type(backend).__name__)
        )

    def _fresh_backoff(self) -> Backoff:
        """Each retrying send gets its own attempt count, with the configured shape."""
        b = self._backoff
        return Backoff(base=b.base, cap=b.cap, jitter=b.jitter)

    @property
    def unsent(self) -> int:
        """Messages accepted by ``send`` that wait to be sent again after a failure."""
        return len(self._resend)

    async def _current(self) -> BackendProducer:
        bp = self._bp
        if bp is not None:
            return bp
        async with self._lock:
            if self._closed:
                raise ClosedError(f"producer for {self.topic} is closed")
            bp = self._bp
            if bp is None:
                bp = await self.backend.create_producer(self.topic, None, **self._opts)
                if self._resend:
                    # Published before anyone else may use it, so the old
                    # messages keep their place ahead of new ones.
                    await self._replay(bp)
                self._use(bp)
            return bp

    def _use(self, bp: BackendProducer | None) -> None:
        self._bp = bp
        self._nowait = getattr(bp, "send_nowait", None)

    async def _replay(self, bp: BackendProducer) -> None:
        """Send what the last producer left unconfirmed, and wait for the broker's word."""
        n = len(self._resend)
        log.warning(
            "producer for %s: sending again %d message(s) the broker had not confirmed",
            self.topic, n,
        )
        try:
            while self._resend:
                data, props, key = self._resend[0]
                await bp.send(data, props, key=key)
                self._resend.popleft()
            await bp.flush()
        except PubSubError as exc:
            self._salvage(exc)
            try:
                await bp.close()
            except PubSubError as cexc:
                # Replayed sends still in flight fail here: keep them too.
                self._salvage(cexc)
            except Exception:
                log.debug("closing a failed producer for %s", self.topic, exc_info=True)
            raise

    def _salvage(self, exc: BaseException) -> None:
        """Keep the messages a failure ended, ahead of those still waiting."""
        if isinstance(exc, PubSubError) and exc.unconfirmed:
            # Taken once: several senders may see the same error object.
            items, exc.unconfirmed = exc.unconfirmed, ()
            self._resend.extendleft(reversed(items))

    async def _discard(self, bp: BackendProducer, exc: BaseException | None) -> None:
        """Forget a broken backend producer (once, whoever notices first),
        keeping what it left unconfirmed when the connection was the cause."""
        if exc is not None:
            self._salvage(exc)
        if self._bp is bp:
            self._use(None)
            try:
                await bp.close()
            except PubSubError as cexc:
                if exc is not None:
                    self._salvage(cexc)
            except Exception:
                log.debug("closing a failed producer for %s", self.topic, exc_info=True)

    async def _on(self, bp: BackendProducer, data: bytes, properties: Mapping[str, str] | None,
                  key: str | None) -> None:
        """One send on ``bp``; a failure that ended other messages retires ``bp``."""
        try:
            await bp.send(data, properties, key=key)
        except BrokerConnectionError as exc:
            await self._discard(bp, exc)
            raise
        except PubSubError as exc:
            if exc.unconfirmed:  # a refusal ended the producer's window: it is done
                await self._discard(bp, None)
            raise

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
        data = encode_payload(self.schema, message, self.topic)
        bp = self._bp
        if bp is not None:
            nowait = self._nowait
            if nowait is not None and nowait(data, properties, key):
                self._metrics.sent()
                return
            try:
                await self._on(bp, data, properties, key)
                self._metrics.sent()
                return
            except BrokerConnectionError:
                pass

        async def attempt() -> None:
            await self._on(await self._current(), data, properties, key)

        await retry(
            attempt,
            retry_on=(BrokerConnectionError,),
            deadline=self.send_deadline,
            backoff=self._fresh_backoff(),
            what=f"send to {self.topic}",
        )
        self._metrics.sent()

    async def flush(self) -> None:
        """Wait until the broker confirmed everything sent so far.

        Messages a lost connection left unconfirmed are sent again first;
        connection errors are retried until ``send_deadline``.
        """

        async def attempt() -> None:
            bp = self._bp
            if bp is None:
                if self._resend:
                    await self._current()  # sends them again and flushes
                return
            try:
                await bp.flush()
            except BrokerConnectionError as exc:
                await self._discard(bp, exc)
                raise
            except PubSubError as exc:
                if exc.unconfirmed:
                    await self._discard(bp, None)
                raise

        await retry(
            attempt,
            retry_on=(BrokerConnectionError,),
            deadline=self.send_deadline,
            backoff=self._fresh_backoff(),
            what=f"flush the producer for {self.topic}",
        )

    async def close(self) -> None:
        """Flush and release the backend producer.  Idempotent.

        A flush that fails is raised: the caller must know that messages may
        not have reached the broker.  Messages still waiting to be sent again
        then are counted in a ``DeliveryError``.
        """
        if self._closed:
            return
        try:
            await self.flush()
        except BrokerConnectionError as exc:
            failure: BaseException | None = exc
        except PubSubError as exc:
            failure = exc
        else:
            failure = None
        self._closed = True
        async with self._lock:
            bp = self._bp
            self._use(None)
        if bp is not None:
            try:
                await bp.close()
            except PubSubError as exc:
                self._salvage(exc)
                failure = failure or exc
        if self._resend:
            n = len(self._resend)
            raise DeliveryError(
                f"producer for {self.topic} closed with {n} message(s) the broker never "
                f"confirmed ({failure}); they may not have reached it",
                n,
            ) from failure
        if failure is not None:
            raise failure

    async def stop(self) -> None:
        """``close``: the name ``Lifecycle`` (and ``async with``) uses."""
        await self.close()

    def __repr__(self) -> str:
        return f"<Producer topic={self.topic!r} closed={self._closed} unsent={len(self._resend)}>"
