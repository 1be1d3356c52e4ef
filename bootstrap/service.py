"""``OperationService``: a request/response service that always answers.

The config and flow services share this shape: requests carry an
``operation``; each operation is a method; every request gets exactly one
answer (or one stream of answers), and a request that cannot be served gets
a response whose ``error`` names the problem:

* bytes that do not decode as the request schema: ``bad-request`` naming the
  field at fault (the responder consumes raw bytes and decodes them here, so
  a malformed request is answered instead of dead-lettered in silence);
* an operation nobody knows: ``bad-operation`` listing the known ones;
* ``RequestError(type, message)`` raised by an operation: that record;
* anything else an operation raises: ``internal``, logged with its traceback.

Nothing an operation raises reaches the consumer, so a bad request is never
redelivered and never loops; the service keeps serving.

Replicas of one service share one subscription (the class's
``subscription``, or the ``subscription`` parameter), so each request is
served by one of them.  A replica takes from the broker no more requests
than it serves at once (``prefetch`` = ``--concurrency``), so a replica that
hangs strands at most that many, where the broker dispatches per message
(Pulsar, RabbitMQ; on Kafka a hung member holds its partitions until the
group evicts it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from trustgraph_pubsub import Responder
from trustgraph_pubsub.processor import AsyncProcessor
from trustgraph_schema import DecodeError, Error, decode

log = logging.getLogger(__name__)

__all__ = ["OperationService", "RequestError"]

#: answers longer than this are split into a stream of partial answers; the
#: smallest broker limit is Pulsar's 5 MiB, and big messages hurt everyone's latency.
MAX_ANSWER_BYTES = 1024 * 1024


class RequestError(Exception):
    """A request the service refuses; becomes ``Error(type, message)`` in the answer."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(message)
        self.type = type
        self.message = message


def require(value: Any, field: str, kind: type = str) -> Any:
    """``value`` if it is a non-empty ``kind``, else a ``bad-request`` naming ``field``."""
    if value is None:
        raise RequestError("bad-request", f"{field} is required")
    if not isinstance(value, kind):
        raise RequestError("bad-request", f"{field} must be {kind.__name__}")
    if kind is str and not value:
        raise RequestError("bad-request", f"{field} must not be empty")
    return value


class OperationService(AsyncProcessor):
    """Serve ``request_schema`` requests on ``request_topic`` by operation name."""

    request_topic: ClassVar[str]
    response_topic: ClassVar[str]
    request_schema: ClassVar[type[Any]]
    response_schema: ClassVar[type[Any]]
    #: the shared subscription of all replicas
    subscription: ClassVar[str]
    #: requests served at once: a slow one (a flow stop waiting for its
    #: processors) must not hold up the rest
    default_concurrency: ClassVar[int] = 16

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if params.get("subscription"):
            self.subscription = str(params["subscription"])  # type: ignore[misc]
        self._responder: Responder | None = None
        self.operations: dict[str, Callable[[Any], Awaitable[Any]]] = {}

    async def on_start(self) -> None:
        await self.open_service()
        self._responder = Responder(
            self.backend,
            self.request_topic,
            None,  # raw bytes: decoded in _handle, so a malformed request gets an answer
            self.response_topic,
            self.response_schema,
            self._handle,
            subscription=self.subscription,
            concurrency=self.concurrency,
            # No request waits behind a busy replica: the broker hands a replica
            # only what it can serve now, so one that hangs (or is killed on a
            # broker that keeps a dead connection's consumers) strands at most
            # ``concurrency`` requests, and the rest go to replicas that answer.
            # Control-plane requests are few; a broker round trip per request
            # costs nothing that matters here.
            prefetch=self.concurrency,
            metrics=self.metrics,
        )
        await self._responder.start()

    async def on_stop(self) -> None:
        try:
            if self._responder is not None:
                await self._responder.stop(self.drain_timeout)
        finally:
            await self.close_service()

    async def open_service(self) -> None:
        """Open stores and clients before requests are taken."""

    async def close_service(self) -> None:
        """Close them after the last request was answered."""

    def error(self, type: str, message: str) -> Any:
        return self.response_schema(error=Error(type=type, message=message))

    async def _handle(self, data: bytes, properties: dict[str, str]) -> Any:
        try:
            request = decode(self.request_schema, data)
        except DecodeError as exc:
            return self.error("bad-request", f"malformed {self.request_schema.__name__}: {exc}")
        op = self.operations.get(request.operation)
        if op is None:
            return self.error(
                "bad-operation",
                f"unknown operation {request.operation!r}; known: {', '.join(sorted(self.operations))}",
            )
        try:
            return await op(request)
        except RequestError as exc:
            return self.error(exc.type, exc.message)
        except Exception as exc:
            log.exception("%s: %s failed", self.id, request.operation)
            return self.error("internal", f"{request.operation} failed: {type(exc).__name__}: {exc}")
