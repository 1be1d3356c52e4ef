"""The Kafka producer: sends to one topic through the backend's client for its qos.

aiokafka fixes ``acks`` per client, so the client comes from
``KafkaConnection._producer_client`` and is shared by every producer of that
qos level; this class keeps the delivery futures of its own pipelined sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import errors as kerr

from ...backend import check_properties, encode_payload
from ...errors import ClosedError, MessageTooLargeError, Outgoing, PubSubError
from .config import _SWEEP_AT, _YIELD_EVERY
from .errors import _lost

if TYPE_CHECKING:
    from . import KafkaBackend

log = logging.getLogger(__name__)


class KafkaProducer:
    """Sends to one topic through the backend's shared client for its qos.

    q0 and q1 sends return once the record is in aiokafka's batch
    accumulator: many are in flight together, and ``flush`` waits for their
    delivery reports.  A failed delivery is raised by the next ``send`` or
    ``flush``, carrying in ``unconfirmed`` every message whose delivery
    failed (so that ``Producer`` sends them again, or says how many were
    lost).  q2 sends wait for the broker's confirmation.
    """

    def __init__(
        self,
        backend: KafkaBackend,
        topic: str,
        native: str,
        schema: type[Any] | None,
        client: Any,
        confirm: bool,
    ) -> None:
        self.topic = topic
        self._backend = backend
        self._native = native
        self._schema = schema
        self._client = client
        self._confirm = confirm
        self._max = backend.capabilities.max_message_size
        #: delivery futures of pipelined sends, with what was sent
        self._pending: list[tuple[asyncio.Future[Any], Outgoing]] = []
        self._calls = 0  # sends since the last yield to the loop
        #: messages whose delivery failed, not yet handed to a caller in an error
        self._failed: list[Outgoing] = []
        self._error: PubSubError | None = None
        self._closed = False

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        if self._closed:
            raise ClosedError(f"producer for {self.topic} is closed")
        if self._error is not None:
            raise self._take_error()
        payload = encode_payload(self._schema, message, self.topic)
        props = check_properties(properties, self.topic)
        if len(payload) > self._max:
            raise MessageTooLargeError(
                f"message for {self.topic} is {len(payload)} bytes, over the limit of "
                f"{self._max} (--kafka-max-message-size)"
            )
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key for {self.topic} must be str, got {type(key).__name__}")
        headers = [(k, v.encode()) for k, v in props.items()] if props else None
        try:
            fut = await self._client.send(
                self._native,
                payload,
                key=None if key is None else key.encode(),
                headers=headers,
            )
            if self._confirm:
                await fut
                return
        except kerr.KafkaError as exc:
            raise _lost(exc, f"send to {self.topic}") from exc
        self._pending.append((fut, (payload, props or None, key)))
        if len(self._pending) >= _SWEEP_AT:
            self._sweep()
        self._calls += 1
        if self._calls >= _YIELD_EVERY:
            self._calls = 0
            await asyncio.sleep(0)

    def _record(self, exc: BaseException, item: Outgoing) -> None:
        self._failed.append(item)
        if self._error is None:
            self._error = _lost(exc, f"send to {self.topic}")
            self._error.__cause__ = exc

    def _take_error(self) -> PubSubError:
        """The pending error, carrying every failed message so far; both are reset."""
        error, self._error = self._error, None
        assert error is not None
        error.unconfirmed, self._failed = tuple(self._failed), []
        log.warning(
            "%d message(s) to %s were not delivered: %s", len(error.unconfirmed), self.topic, error
        )
        return error

    def _sweep(self) -> None:
        """Drop finished delivery futures, keeping the failures."""
        still: list[tuple[asyncio.Future[Any], Outgoing]] = []
        for entry in self._pending:
            fut = entry[0]
            if not fut.done():
                still.append(entry)
                continue
            exc = fut.exception()
            if exc is not None:
                self._record(exc, entry[1])
        self._pending = still

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            results = await asyncio.gather(*(f for f, _ in pending), return_exceptions=True)
            for res, (_, item) in zip(results, pending, strict=True):
                if isinstance(res, BaseException):
                    self._record(res, item)
        if self._error is not None:
            raise self._take_error()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backend._producers.discard(self)
        await self.flush()

    def __repr__(self) -> str:
        return f"<KafkaProducer topic={self.topic!r} native={self._native!r}>"
