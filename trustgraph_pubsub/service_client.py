"""``ServiceClient``: the caller's side of a control-plane service.

A service (config, flow) answers requests on its response topic with one
response, or, when an answer is too large for one message, a stream of
partial responses that the client merges (``merge``) into one.  A response
whose ``error`` is set raises ``ServiceError`` carrying the record; no reply
within ``timeout`` seconds raises ``PubSubTimeoutError``.

The client is a thin shell over ``RequestResponse``: it has the same
lifecycle (``start``/``stop``, ``async with``), its replies come on an
ephemeral subscription of its own, and a caller that dies leaves nothing
behind on the broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Generic, TypeVar

from .backend import PubSubBackend
from .errors import PubSubTimeoutError, ServiceError
from .lifecycle import Lifecycle
from .metrics import Metrics
from .request_response import RequestResponse

__all__ = ["ServiceClient"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class ServiceClient(Lifecycle, Generic[Req, Resp]):
    """Requests of ``request_schema`` to a service, merged responses back."""

    #: who answers, for error messages
    service: str = "service"

    def __init__(
        self,
        backend: PubSubBackend,
        request_topic: str,
        request_schema: type[Req],
        response_topic: str,
        response_schema: type[Resp],
        *,
        timeout: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"{self.service} client: timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self._rr = RequestResponse(
            backend, request_topic, request_schema, response_topic, response_schema,
            metrics=metrics,
        )

    async def start(self) -> None:
        """Subscribe to replies; idempotent."""
        await self._rr.start()

    async def stop(self) -> None:
        """Release the reply subscription; idempotent."""
        await self._rr.stop()


    def ping_request(self) -> Req:
        """A cheap request that any running instance of the service answers."""
        raise NotImplementedError(f"{type(self).__name__} has no ping request")

    async def wait_until_up(self, within: float = 60.0, *, attempt: float = 2.0) -> float:
        """Ping until the service answers; the seconds it took.

        A request published before any instance of the service subscribed
        can be lost on brokers whose queues appear on first subscription
        (MQTT, Pulsar and Kafka without a pre-created queue), so a caller
        that starts together with the service waits here first.  Raises
        ``PubSubTimeoutError`` after ``within`` seconds.  An ``Error``
        answer counts as an answer: the service is up.
        """
        began = time.monotonic()
        deadline = began + within
        while True:
            try:
                await self.call(self.ping_request(), timeout=min(attempt, within))
                return time.monotonic() - began
            except ServiceError:
                return time.monotonic() - began
            except PubSubTimeoutError:
                if time.monotonic() >= deadline:
                    raise PubSubTimeoutError(
                        f"the {self.service} did not answer within {within}s"
                    ) from None
            await asyncio.sleep(0)

    def merge(self, into: Resp, part: Resp) -> None:
        """Fold a later part of a streamed answer into the first.  Subclasses say how."""
        raise NotImplementedError(f"{type(self).__name__} does not merge streamed answers")

    async def call(self, request: Req, *, timeout: float | None = None) -> Resp:  # noqa: ASYNC109
        """Send ``request``; the (merged) response, or ``ServiceError``/``PubSubTimeoutError``."""
        wait = self.timeout if timeout is None else timeout
        first: Resp | None = None
        async for part in self._rr.request_stream(request, timeout=wait):
            if first is None:
                first = part
            else:
                self.merge(first, part)
        assert first is not None  # request_stream ends only after a reply
        error = getattr(first, "error", None)
        if error is not None:
            raise ServiceError(self.service, error.type, error.message)
        return first
