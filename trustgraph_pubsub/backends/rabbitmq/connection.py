"""The backend's one pika ``AsyncioConnection``: connect (once, for every
caller), reconnect, channels whose RPCs are awaitables, and the write
coalescing of ``_coalesce_writes``.

``_BackendConnection`` holds the connection state and is the base of
``RabbitMQBackend`` (through ``_QueueLifecycle``), so producers and consumers
keep calling ``backend._connection()`` and ``backend._open_channel()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from ...errors import (
    AuthenticationError,
    BrokerConnectionError,
    ClosedError,
    PubSubError,
)
from .config import CONNECT_TIMEOUT, RPC_TIMEOUT, _connection_parameters
from .errors import _connect_failure, _translate_error

if TYPE_CHECKING:
    from .producer import RabbitMQProducer

log = logging.getLogger(__name__)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        # Nobody may be awaiting it (a waiter that timed out): keep asyncio quiet.
        fut.exception()


class _Channel:
    """A pika channel whose RPCs are awaitables.

    When the channel closes (broker error, our close, or the connection
    dropping), every pending RPC fails with the close reason and ``on_close``
    is told, once.
    """

    __slots__ = ("ch", "reason", "on_close", "_pending", "_closed", "_loop")

    def __init__(self, ch: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.ch = ch
        self._loop = loop
        self.reason: BaseException | None = None
        self.on_close: Callable[[BaseException], None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._closed: asyncio.Future[None] = loop.create_future()
        ch.add_on_close_callback(self._on_close)

    @property
    def is_open(self) -> bool:
        return self.reason is None and bool(self.ch.is_open)

    def _on_close(self, _ch: Any, reason: BaseException) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        pending, self._pending = self._pending, set()
        for fut in pending:
            _set_exception(fut, reason)
        _set_result(self._closed, None)
        hook, self.on_close = self.on_close, None
        if hook is not None:
            hook(reason)

    def future(self) -> asyncio.Future[Any]:
        """A future that fails with the close reason if the channel closes first."""
        return self.track(self._loop.create_future())

    def track(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Fail ``fut`` with the close reason if the channel closes before it is done."""
        if self.reason is not None:
            _set_exception(fut, self.reason)
            return fut
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one synchronous AMQP method; its reply frame, or the close reason raised."""
        fut = self.future()
        if not fut.done():
            try:
                method(*args, callback=lambda frame: _set_result(fut, frame), **kwargs)
            except Exception as exc:
                _set_exception(fut, exc)
        async with asyncio.timeout(RPC_TIMEOUT):
            return await fut

    async def close(self) -> None:
        """Close and wait for close-ok (or the connection to go); never raises."""
        if self.reason is None and (self.ch.is_open or self.ch.is_opening):
            with contextlib.suppress(Exception):
                self.ch.close()
        if self.reason is None and not self.ch.connection.is_open:
            return  # no close-ok will come; the connection's end closes it
        with contextlib.suppress(Exception):
            async with asyncio.timeout(RPC_TIMEOUT):
                await asyncio.shield(self._closed)


class _BackendConnection:
    """The connection half of ``RabbitMQBackend``: its one connection, opened
    by the first caller and reopened after a loss, with the producers whose
    unconfirmed messages wait for it (``_orphans``)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        vhost: str,
        heartbeat: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        #: pika makes this the connection's heartbeat whatever the broker proposes
        #: (None used to take the broker's 60 s); a link that goes quiet is
        #: closed by pika's heartbeat checker (measured in tests/backends/test_stall.py).
        self.heartbeat = heartbeat
        self.host = host
        self.port = port
        self.username = username
        self.vhost = vhost or "/"
        self.__password = password
        #: the amqps client context (``trustgraph_pubsub.tls``), None for plain AMQP
        self.__tls = tls
        #: shown to operators (``rabbitmqctl list_connections user_provided_name``)
        self._connection_name = f"trustgraph-pubsub:{os.getpid()}:{id(self):x}"
        self._conn: Any = None
        self._conn_closed: asyncio.Future[None] | None = None
        self._flush_now: Callable[[], None] | None = None
        #: ``_push`` wrote this loop iteration already
        self._pushed = False
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._orphans: set[RabbitMQProducer] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def tls(self) -> bool:
        """Whether the connection is amqps."""
        return self.__tls is not None

    @property
    def _where(self) -> str:
        tls = ", TLS" if self.__tls is not None else ""
        return f"{self.host}:{self.port} (vhost {self.vhost!r}{tls})"

    def _is_connected(self) -> bool:
        return self._conn is not None and bool(self._conn.is_open)

    # -- connection -------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("RabbitMQ backend is closed; create a new one with get_pubsub()")

    async def _connection(self) -> Any:
        """The open connection, connecting (once, for every caller) if needed."""
        self._check()
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (tests, asyncio.run twice): the old connection is unusable.
            self._loop, self._conn, self._lock = loop, None, asyncio.Lock()
        conn = self._conn
        if conn is not None and conn.is_open:
            return conn
        assert self._lock is not None
        async with self._lock:
            self._check()
            conn = self._conn
            if conn is not None and conn.is_open:
                return conn
            conn = await self._connect(loop)
            self._conn = conn
            for producer in list(self._orphans):
                self._spawn(self._recover(producer))
            return conn

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Any:
        params = _connection_parameters(
            self.host,
            self.port,
            self.vhost,
            self.username,
            self.__password,
            self.heartbeat,
            self._connection_name,
            self.__tls,
        )
        opened: asyncio.Future[Any] = loop.create_future()
        closed: asyncio.Future[None] = loop.create_future()

        def on_open(conn: Any) -> None:
            _set_result(opened, conn)

        def on_open_error(_conn: Any, exc: BaseException) -> None:
            _set_exception(opened, exc)
            _set_result(closed, None)

        def on_close(conn: Any, reason: BaseException) -> None:
            _set_result(closed, None)
            if conn is self._conn:
                self._conn = None
                log.warning("connection to RabbitMQ at %s lost: %s", self._where, reason)

        conn = AsyncioConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + 2):
                await opened
        except TimeoutError as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise BrokerConnectionError(
                f"timed out after {CONNECT_TIMEOUT:.0f}s connecting to RabbitMQ at {self._where}; "
                "check --rabbitmq-host/--rabbitmq-port (RABBITMQ_HOST/RABBITMQ_PORT)"
            ) from exc
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        except (
            pika.exceptions.ProbableAuthenticationError,
            pika.exceptions.AuthenticationError,
        ) as exc:
            raise AuthenticationError(
                f"RabbitMQ at {self._where} refused the credentials of user {self.username!r} "
                "(ACCESS_REFUSED); check --rabbitmq-username/--rabbitmq-password "
                "(RABBITMQ_USERNAME/RABBITMQ_PASSWORD)"
            ) from exc
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise AuthenticationError(
                f"RabbitMQ at {self.host}:{self.port} denied user {self.username!r} access to "
                f"vhost {self.vhost!r} (it does not exist or the user has no permission); "
                "check --rabbitmq-vhost (RABBITMQ_VHOST)"
            ) from exc
        except Exception as exc:
            raise BrokerConnectionError(_connect_failure(exc, self._where, self.tls)) from exc
        self._conn_closed = closed
        self._flush_now = _coalesce_writes(conn)
        log.debug("connected to RabbitMQ at %s", self._where)
        return conn

    async def _open_channel(self, conn: Any, what: str) -> _Channel:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[Any] = loop.create_future()
        try:
            ch = conn.channel(on_open_callback=lambda _c: _set_result(opened, None))
        except Exception as exc:
            raise self._translate(exc, f"{what}: open channel") from exc
        # Registered before any I/O can happen (we are on the loop): a channel that
        # fails to open fails ``opened`` through the close callback.
        chan = _Channel(ch, loop)
        chan.track(opened)
        try:
            async with asyncio.timeout(RPC_TIMEOUT):
                await opened
        except BaseException as exc:
            await chan.close()
            if not isinstance(exc, Exception):
                raise  # cancelled: stay cancelled, not a PubSubError
            raise self._translate(exc, f"{what}: open channel") from exc
        return chan

    def _translate(self, exc: BaseException, what: str) -> PubSubError:
        """A pika (or asyncio) failure as the SDK's own exception, naming ``what``."""
        return _translate_error(exc, what, self.username, self._where)

    def _push(self) -> None:
        """Send what pika has queued now rather than at the next loop iteration.

        At most once per loop iteration: a burst of latency-bound sends (200
        concurrent requests, a responder answering a batch) would otherwise
        pay one ``send()`` and two ``epoll_ctl`` calls per message.  The first
        send of an iteration goes at once; what later ones queue in the same
        iteration is written by pika on the next, joined into one write
        (``_coalesce_writes``).  Measured on 200 concurrent round trips:
        p50 56 ms with a push per send, against 37-46 ms for raw pika.
        """
        if self._pushed:
            return
        flush = self._flush_now
        if flush is not None and self._conn is not None:
            flush()
            self._pushed = True
            asyncio.get_running_loop().call_soon(self._unpush)

    def _unpush(self) -> None:
        self._pushed = False

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover(self, producer: RabbitMQProducer) -> None:
        try:
            await producer._recover()
        except Exception as exc:
            log.warning(
                "could not republish %d unconfirmed messages to %s yet: %s",
                producer.unconfirmed, producer.topic, exc,
            )


#: Largest write ``_coalesce_writes`` builds: big enough for hundreds of small
#: frames, small enough that a partial send never re-copies much.
_COALESCE_MAX = 64 * 1024


def _coalesce_writes(conn: Any) -> Callable[[], None] | None:
    """Send the frames pika has queued with as few ``send()`` calls as possible.

    pika's asyncio transport queues every frame as its own chunk and sends one
    chunk per system call: three per published message, one per ack.  On
    this machine a loopback ``send()`` costs tens of microseconds, the largest
    per-message cost of the whole publish path (measured with cProfile).
    Joining the queued chunks, up to ``_COALESCE_MAX`` bytes per write, keeps
    the bytes and their order and only cuts the system calls.  The transport
    internals used (``_tx_buffers``, ``_produce``) exist in pika 1.3 and 1.4;
    without them pika's own behaviour is kept.  Over TLS each ``send()`` is
    also one TLS record, so joining saves encryption overhead too; the TLS
    transport's own ``_produce`` still does the sending and its WANT_READ /
    WANT_WRITE handling (a chunk left unsent by WANT_WRITE stays first, and
    Python's ``ssl`` accepts the retried write moved and grown).

    Returns a function that sends what is queued now, or None.  pika writes
    only when the loop next reports the socket writable, one iteration later;
    latency-bound sends skip that wait.  The function is the transport's own
    writability handler, so pika's state checks, its handling of a full
    socket (the rest stays queued for the writer) and of errors all apply.
    """
    transport = getattr(conn, "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    produce = getattr(transport, "_produce", None)
    writable = getattr(transport, "_on_socket_writable", None)
    if (
        transport is None
        or not isinstance(buffers, deque)
        or not callable(produce)
        or not callable(writable)
    ):
        return None

    def coalescing_produce() -> None:
        if len(buffers) > 1:
            chunks = list(buffers)
            buffers.clear()
            part: list[bytes] = []
            size = 0
            for chunk in chunks:
                if part and size + len(chunk) > _COALESCE_MAX:
                    buffers.append(b"".join(part))
                    part, size = [], 0
                part.append(chunk)
                size += len(chunk)
            buffers.append(part[0] if len(part) == 1 else b"".join(part))
        produce()

    transport._produce = coalescing_produce
    # The TLS transport (``_AsyncSSLTransport``) keeps ``self._produce`` in its
    # reader/writer action slots and asserts that a slot holding it equals
    # ``self._produce``: a slot bound before the swap (frames queued while
    # connecting) would fail that check and abort the connection, so it is
    # pointed at the new one.
    tls = hasattr(transport, "_ssl_writable_action")
    for slot in ("_ssl_readable_action", "_ssl_writable_action"):
        if getattr(transport, slot, None) == produce:
            setattr(transport, slot, coalescing_produce)

    def flush_now() -> None:
        # TLS: only when the transport is waiting to write frames; it may be
        # waiting to read first (OpenSSL's WANT_READ), or have nothing to do.
        if buffers and (not tls or transport._ssl_writable_action is coalescing_produce):
            writable()

    return flush_now

