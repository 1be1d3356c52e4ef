"""Correlated request/response over two topics.

The caller (``RequestResponse``) sends a request with a fresh ``id``
property (a random 64-bit prefix per caller and a counter) and waits for replies carrying the same ``id`` on the
response topic.  The service (``Responder``) runs a handler per request and
copies ``id`` onto its replies.

Every ``RequestResponse`` has its own subscription on the response topic
(``rr-<uuid>`` unless one is given), so each caller sees every reply, keeps
its own and drops the rest; the subscription is deleted on ``stop``.  The
generated one is *ephemeral* (``create_consumer(..., ephemeral=True)``): the
broker deletes it when its consumer closes or its connection dies, so a
caller that crashes (even SIGKILL) leaves no queue, session or subscription
behind, and its metrics label set is released on ``stop``.  If the
connection drops, the subscription is recreated empty and replies sent in
between are lost (those requests time out).  A subscription the caller names
stays durable, as before.  A reply that arrives after its request timed out
is dropped and counted.

Streams: a handler may return an async iterator of responses.  Each is sent
as it is produced, except that the Responder holds one back so that it can
mark the last one with ``final="true"``; a plain reply always carries
``final="true"``.  The caller stops at the first reply for which
``is_final(value, properties)`` holds; by default a ``final="true"``
property, or a value whose ``end_of_stream`` attribute is True.

A stream's replies are sent with the request id as their key, so a
partitioned backend keeps them in order on one partition.  A single reply
has no order to keep and goes without a key: on Kafka a key is hashed
(aiokafka's murmur2, about 12 us in pure Python) on every send.

Requests and replies are latency-bound: their producers are created with
``latency_bound=True`` so a batching backend does not hold them back.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from .backend import Message, PubSubBackend
from .consumer import DEFAULT_PREFETCH, Consumer
from .errors import ClosedError, PubSubTimeoutError
from .lifecycle import Lifecycle
from .metrics import Metrics
from .producer import Producer
from .subscriber import Subscriber

log = logging.getLogger(__name__)

__all__ = ["RequestResponse", "Responder", "ResponderHandler", "default_is_final"]

ID = "id"
FINAL = "final"

ResponderHandler = Callable[[Any, dict[str, str]], Any]


def default_is_final(value: Any, properties: Mapping[str, str]) -> bool:
    """``final="true"``, or a value with ``end_of_stream`` set."""
    return properties.get(FINAL) == "true" or getattr(value, "end_of_stream", False) is True


class RequestResponse(Lifecycle):
    """The caller side: ``request`` for one reply, ``request_stream`` for many."""

    def __init__(
        self,
        backend: PubSubBackend,
        request_topic: str,
        request_schema: type[Any] | None,
        response_topic: str,
        response_schema: type[Any],
        *,
        subscription: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.request_topic = request_topic
        self.response_topic = response_topic
        self._own_subscription = subscription is None
        self.subscription = subscription or f"rr-{uuid.uuid4().hex}"
        self._producer = Producer(
            backend, request_topic, request_schema, latency_bound=True, metrics=metrics
        )
        self._subscriber = Subscriber(
            backend,
            response_topic,
            self.subscription,
            response_schema,
            metrics=metrics,
            ephemeral=self._own_subscription,
        )
        self._started = False
        self._stopped = False
        self._id_prefix = f"{uuid.uuid4().hex[:16]}-"
        self._ids = itertools.count()

    async def start(self) -> None:
        """Subscribe to replies, then open the request producer.  Idempotent."""
        if self._stopped:
            raise ClosedError(f"request/response on {self.request_topic} is stopped")
        if self._started:
            return
        await self._subscriber.start()
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        """Close the producer and the reply consumer; delete a generated subscription."""
        if self._stopped:
            return
        self._stopped = True
        try:
            await self._producer.close()
        finally:
            await self._subscriber.stop(unsubscribe=self._own_subscription)


    def _check(self) -> None:
        if not self._started or self._stopped:
            raise ClosedError(
                f"request/response on {self.request_topic} is "
                f"{'stopped' if self._stopped else 'not started; call start() first'}"
            )

    def _new_id(self) -> str:
        # Unique across callers sharing a response topic: a random 64-bit
        # prefix per caller, then a counter (cheaper than a uuid per request).
        return f"{self._id_prefix}{next(self._ids)}"

    async def _send(self, message: Any, properties: Mapping[str, str] | None, rid: str) -> None:
        props = dict(properties) if properties else {}
        props[ID] = rid
        try:
            await self._producer.send(message, props)
        except BaseException:
            self._subscriber.unsubscribe(rid)
            raise

    async def _next(
        self, waiter: asyncio.Queue[Message] | asyncio.Future[Message], rid: str, wait: float
    ) -> Message:
        try:
            async with asyncio.timeout(wait):
                if isinstance(waiter, asyncio.Queue):
                    return await waiter.get()
                return await waiter
        except TimeoutError:
            raise PubSubTimeoutError(
                f"no reply on {self.response_topic} to request {rid} on {self.request_topic} "
                f"within {wait}s"
            ) from None

    async def request(
        self,
        message: Any,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 (the contract's name)
        properties: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return the first reply's value.

        ``PubSubTimeoutError`` after ``timeout`` seconds; a reply that comes
        later is dropped.
        """
        self._check()
        rid = self._new_id()
        fut = self._subscriber.expect(rid)
        await self._send(message, properties, rid)
        try:
            reply = await self._next(fut, rid, timeout)
            return reply.value()
        finally:
            self._subscriber.unsubscribe(rid)

    async def request_stream(
        self,
        message: Any,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 (the contract's name)
        properties: Mapping[str, str] | None = None,
        is_final: Callable[[Any, dict[str, str]], bool] | None = None,
    ) -> AsyncIterator[Any]:
        """Send one request and yield reply values until the final one.

        ``timeout`` applies to the wait for each reply, not the whole stream.
        """
        final = is_final or default_is_final
        self._check()
        rid = self._new_id()
        queue = self._subscriber.subscribe(rid)
        await self._send(message, properties, rid)
        try:
            while True:
                reply = await self._next(queue, rid, timeout)
                value = reply.value()
                yield value
                if final(value, reply.properties()):
                    return
        finally:
            self._subscriber.unsubscribe(rid)

    def __repr__(self) -> str:
        return (
            f"<RequestResponse request={self.request_topic!r} response={self.response_topic!r} "
            f"subscription={self.subscription!r}>"
        )


class Responder(Lifecycle):
    """The service side: ``handler(request, properties)`` answers each request.

    ``request_schema=None`` hands the handler the raw bytes (a service that
    answers malformed requests itself decodes them).  The handler returns a response (or an awaitable of one), or an async
    iterator of responses for a stream.  Replies carry the request's ``id``
    and ``final``.  A handler exception is a ``Consumer`` handler failure:
    the request is redelivered, then dead-lettered (the caller times out);
    a stream that fails part-way may therefore be replayed from its start,
    so stream consumers should tolerate repeats.  A stream that yields
    nothing sends nothing.

    ``concurrency`` requests are served at once; ``prefetch`` is how many the
    broker may hand this replica ahead of its answers (``Consumer``'s option).
    A replica that hangs, or dies where the broker is slow to notice, strands
    up to ``prefetch`` requests while other replicas idle, so a service whose
    requests are few and precious may set it to ``concurrency``.
    """

    def __init__(
        self,
        backend: PubSubBackend,
        request_topic: str,
        request_schema: type[Any] | None,
        response_topic: str,
        response_schema: type[Any],
        handler: ResponderHandler,
        *,
        subscription: str,
        concurrency: int = 1,
        prefetch: int = DEFAULT_PREFETCH,
        max_redeliveries: int = 5,
        metrics: Metrics | None = None,
    ) -> None:
        self.request_topic = request_topic
        self.response_topic = response_topic
        self.handler = handler
        self._producer = Producer(
            backend, response_topic, response_schema, latency_bound=True, metrics=metrics
        )
        self._consumer = Consumer(
            backend,
            request_topic,
            subscription,
            request_schema,
            self._handle,
            concurrency=concurrency,
            prefetch=prefetch,
            max_redeliveries=max_redeliveries,
            metrics=metrics,
        )

    async def _reply(self, value: Any, rid: str | None, final: bool, *, stream: bool) -> None:
        props = {FINAL: "true" if final else "false"}
        if rid is not None:
            props[ID] = rid
        # A stream is keyed by the request id: where a topic is partitioned (Kafka),
        # every reply of one stream lands on one partition and so keeps its order.
        await self._producer.send(value, props, key=rid if stream else None)

    async def _handle(self, msg: Message) -> None:
        props = msg.properties()
        rid = props.get(ID)
        if rid is None:
            log.warning("request on %s has no %r property; its reply cannot be matched",
                        self.request_topic, ID)
        result = self.handler(msg.value(), dict(props))
        if inspect.isawaitable(result):
            result = await result
        if hasattr(result, "__anext__"):
            stream: AsyncIterator[Any] = result
            held: Any = None
            have = False
            async for item in stream:
                if have:
                    await self._reply(held, rid, final=False, stream=True)
                held, have = item, True
            if have:
                await self._reply(held, rid, final=True, stream=True)
            else:
                log.warning("stream handler for %s yielded nothing for request %s",
                            self.request_topic, rid)
            return
        await self._reply(result, rid, final=True, stream=False)

    async def start(self) -> None:
        """Open the reply producer, then start consuming requests."""
        await self._producer.start()
        await self._consumer.start()

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Finish in-flight requests (their replies are sent), then close.

        Handlers still running after ``drain_timeout`` seconds (None: wait for
        all) are cancelled unanswered; their requests are redelivered."""
        try:
            await self._consumer.stop(drain_timeout)
        finally:
            await self._producer.close()


    def __repr__(self) -> str:
        return f"<Responder request={self.request_topic!r} response={self.response_topic!r}>"
