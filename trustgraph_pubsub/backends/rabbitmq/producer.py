"""``RabbitMQProducer``: publishes to one topic's exchange on its own channel,
with publisher confirms on q1/q2 (see the package docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pika
from pika import spec

from trustgraph_schema.topic import Topic

from ... import naming
from ...backend import check_properties, encode_payload
from ...errors import (
    BrokerConnectionError,
    ClosedError,
    ConnectionLostError,
    MessageTooLargeError,
    PubSubError,
    PubSubTimeoutError,
)
from .config import (
    _PERSISTENT,
    _TRANSIENT,
    _YIELD_EVERY,
    CONFIRM_TIMEOUT,
    MAX_IN_FLIGHT,
    MAX_MESSAGE_SIZE,
)
from .connection import _Channel, _set_exception, _set_result

if TYPE_CHECKING:
    from . import RabbitMQBackend

log = logging.getLogger(__name__)


class RabbitMQProducer:
    """Publishes to one topic's exchange on its own channel (see the package docstring)."""

    def __init__(
        self,
        backend: RabbitMQBackend,
        parsed: Topic,
        schema: type[Any] | None,
        latency_bound: bool = False,
    ) -> None:
        self._backend = backend
        self.topic = str(parsed)
        self._schema = schema
        self._exchange = naming.check_rabbitmq_name(naming.rabbitmq_exchange(parsed), parsed)
        self._confirm = parsed.qos != "q0"
        self._await_confirm = parsed.qos == "q2"
        # Requests, replies and pushes (and q2 sends, which wait for a round trip
        # anyway) go to the socket at once; streams leave pika to coalesce writes.
        self._eager = latency_bound or self._await_confirm
        self._mode = _TRANSIENT if parsed.qos == "q0" else _PERSISTENT
        self._plain_props = pika.BasicProperties(delivery_mode=self._mode)
        self._chan: _Channel | None = None
        self._reopen_lock = asyncio.Lock()
        # Confirm tracking on the current channel: publish sequence numbers start at 1.
        self._seq = 0
        self._low = 1
        self._unconfirmed: dict[int, tuple[bytes, Any, str]] = {}
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._drain: list[tuple[int, asyncio.Future[None]]] = []
        self._rejected = 0
        self._closed = False
        self._calls = 0

    # -- channel management ---------------------------------------------------

    async def _open(self) -> _Channel:
        """A channel in confirm mode (q1/q2) with the exchange declared; republish
        whatever the previous channel left unconfirmed."""
        async with self._reopen_lock:
            chan = self._chan
            if chan is not None and chan.is_open:
                return chan
            what = f"producer on {self.topic}"
            try:
                conn = await self._backend._connection()
            except BrokerConnectionError as exc:
                if isinstance(exc, ConnectionLostError):
                    raise
                raise ConnectionLostError(f"{what}: {exc}") from exc
            chan = await self._backend._open_channel(conn, what)
            try:
                if self._confirm:
                    await chan.call(chan.ch.confirm_delivery, self._on_confirm)
                await chan.call(
                    chan.ch.exchange_declare,
                    exchange=self._exchange,
                    exchange_type="fanout",
                    durable=True,
                )
            except BaseException as exc:
                await chan.close()
                if not isinstance(exc, Exception):
                    raise  # cancelled: stay cancelled, not a PubSubError
                raise self._backend._translate(exc, f"{what}: declare exchange {self._exchange!r}") from exc
            if chan.reason is not None:  # closed while we declared: no hook will fire
                raise self._backend._translate(chan.reason, what)
            # Renumber what the last channel left unconfirmed before publishing it, so
            # that a failure part-way keeps every entry for the next attempt.
            leftover = list(self._unconfirmed.values())
            self._unconfirmed = dict(enumerate(leftover, 1))
            self._seq = len(leftover)
            self._low = 1
            chan.on_close = self._on_channel_closed
            self._chan = chan
            try:
                for body, props, rk in leftover:
                    chan.ch.basic_publish(self._exchange, rk, body, props)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    chan.ch.close()  # the close hook keeps the entries for recovery
                raise self._backend._translate(exc, f"{what}: republish") from exc
            if leftover:
                log.info("producer on %s republished %d unconfirmed messages", self.topic, len(leftover))
            else:
                self._backend._orphans.discard(self)
            return chan

    def _on_channel_closed(self, reason: BaseException) -> None:
        self._chan = None
        err = self._backend._translate(reason, f"producer on {self.topic}")
        # q2 sends are waiting for their own confirm: they fail and their caller
        # resends, so their messages must not be republished as well.
        for seq, fut in self._waiters.items():
            if not fut.done():
                self._unconfirmed.pop(seq, None)
                _set_exception(fut, err)
        self._waiters.clear()
        drain, self._drain = self._drain, []
        for _, fut in drain:
            _set_exception(fut, err)
        if self._unconfirmed:
            self._backend._orphans.add(self)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag: int = method.delivery_tag
        ok = not isinstance(method, spec.Basic.Nack)
        unconfirmed = self._unconfirmed
        waiters = self._waiters
        if method.multiple:
            for seq in range(self._low, tag + 1):
                if unconfirmed.pop(seq, None) is not None:
                    self._confirmed(seq, ok, waiters)
            if tag >= self._low:
                self._low = tag + 1
        elif unconfirmed.pop(tag, None) is not None:
            self._confirmed(tag, ok, waiters)
        if self._drain:
            left = len(unconfirmed)
            keep = []
            for limit, fut in self._drain:
                if left <= limit:
                    _set_result(fut, None)
                elif not fut.done():
                    keep.append((limit, fut))
            self._drain = keep

    def _confirmed(self, seq: int, ok: bool, waiters: dict[int, asyncio.Future[None]]) -> None:
        fut = waiters.pop(seq, None) if waiters else None
        if ok:
            if fut is not None:
                _set_result(fut, None)
            return
        if fut is not None and not fut.done():
            _set_exception(
                fut,
                PubSubError(
                    f"RabbitMQ refused a message sent to {self.topic} (basic.nack): "
                    "it was not delivered; check the broker's log"
                ),
            )
        else:
            self._rejected += 1

    async def _wait_unconfirmed(self, limit: int) -> None:
        if len(self._unconfirmed) <= limit:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain.append((limit, fut))
        await self._confirm_of(fut)

    async def _confirm_of(self, fut: asyncio.Future[None]) -> None:
        """Wait for a confirm, but not forever: a queue that lost its quorum
        accepts publishes and never confirms them.  The messages stay
        unconfirmed (published again on reconnect; a later nack is counted and
        raised by the next flush)."""
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await fut
        except TimeoutError:
            raise PubSubTimeoutError(
                f"RabbitMQ confirmed nothing sent to {self.topic} within {CONFIRM_TIMEOUT:.0f}s "
                f"({len(self._unconfirmed)} messages unconfirmed); is the queue's quorum up?"
            ) from None

    def _raise_rejected(self) -> None:
        if self._rejected:
            n, self._rejected = self._rejected, 0
            raise PubSubError(
                f"RabbitMQ refused {n} messages sent to {self.topic} (basic.nack): they were "
                "not delivered; check the broker's log"
            )

    # -- the BackendProducer API ------------------------------------------------

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        if self._closed:
            raise ClosedError(f"producer for {self.topic} is closed; create a new one")
        body = encode_payload(self._schema, message, self.topic)
        if len(body) > MAX_MESSAGE_SIZE:
            raise MessageTooLargeError(
                f"message for {self.topic} is {len(body)} bytes; RabbitMQ accepts at most "
                f"{MAX_MESSAGE_SIZE} (max_message_size)"
            )
        if properties:
            props = pika.BasicProperties(
                delivery_mode=self._mode, headers=check_properties(properties, self.topic)
            )
        else:
            props = self._plain_props
        rk = key or ""
        chan = self._chan
        if chan is None or chan.reason is not None:
            chan = await self._open()
        try:
            chan.ch.basic_publish(self._exchange, rk, body, props)
        except Exception as exc:
            raise self._backend._translate(exc, f"send to {self.topic}") from exc
        if self._eager:
            self._backend._push()
        if self._confirm:
            self._seq += 1
            seq = self._seq
            self._unconfirmed[seq] = (body, props, rk)
            if self._await_confirm:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters[seq] = fut
                await self._confirm_of(fut)
                return
            if len(self._unconfirmed) >= MAX_IN_FLIGHT:
                await self._wait_unconfirmed(MAX_IN_FLIGHT // 2)
                return
        self._calls += 1
        if self._calls % _YIELD_EVERY == 0:
            await asyncio.sleep(0)

    async def flush(self) -> None:
        """Wait until the broker has everything sent so far (see the package docstring)."""
        if self._chan is None:
            if self._closed and not self._unconfirmed:
                return
            if self._unconfirmed or not self._confirm:
                await self._open()
        chan = self._chan
        if self._confirm:
            await self._wait_unconfirmed(0)
        elif chan is not None:
            try:
                await chan.call(chan.ch.basic_qos, prefetch_count=0)
            except Exception as exc:
                raise self._backend._translate(exc, f"flush {self.topic}") from exc
        self._raise_rejected()

    async def close(self) -> None:
        """Flush, then close the channel.  Idempotent.

        If the flush fails because the broker is unreachable, the unconfirmed
        messages stay with the backend, which publishes them when it next
        connects, and the error is raised so that the caller knows.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush()
        finally:
            chan, self._chan = self._chan, None
            if chan is not None:
                chan.on_close = None
                await chan.close()
            if not self._unconfirmed:
                self._backend._orphans.discard(self)
            self._backend._children.discard(self)

    async def _recover(self) -> None:
        """Republish unconfirmed messages after a reconnect (run by the backend)."""
        await self._open()
        await self._wait_unconfirmed(0)
        if self._closed:
            chan, self._chan = self._chan, None
            if chan is not None:
                chan.on_close = None
                await chan.close()

    @property
    def unconfirmed(self) -> int:
        """Messages sent but not yet confirmed by the broker."""
        return len(self._unconfirmed)

    def __repr__(self) -> str:
        return (
            f"<RabbitMQProducer topic={self.topic!r} exchange={self._exchange!r} "
            f"unconfirmed={len(self._unconfirmed)} closed={self._closed}>"
        )
