"""``_Link``: one paho client, connected, reconnected and driven from the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ...errors import BrokerConnectionError, ClosedError, ConnectionLostError, PubSubError
from .config import _CLOSE_TIMEOUT, _MISC_INTERVAL, _READ_BATCH
from .errors import connect_failed, refused, unreachable
from .packets import _properties
from .wire import _Wire

if TYPE_CHECKING:
    from . import MQTTBackend

log = logging.getLogger(__name__)


class _Link:
    """One paho client driven by the event loop.

    Every paho call and callback happens on the loop thread, except the TCP
    connect, which runs in the default executor before the loop watches the
    socket.  Reads: ``add_reader`` -> ``loop_read``.  Writes: the ``_Wire``
    that replaces paho's socket once connected.  paho's own in-flight limit
    is off (``max_inflight_messages`` 0: its queue rescans every in-flight
    message on each PUBACK); the publisher keeps its own window instead.
    """

    def __init__(
        self,
        backend: MQTTBackend,
        client_id: str,
        *,
        session_expiry: int,
        clean_start: bool,
        receive_maximum: int | None = None,
        on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None] | None = None,
        on_lost: Callable[[ReasonCode], None] | None = None,
    ) -> None:
        self.backend = backend
        self.client_id = client_id
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self._session_expiry = session_expiry
        self._clean_start = clean_start
        self._receive_maximum = receive_maximum
        self.on_lost = on_lost
        #: called on every (re)connect, after CONNACK.
        self.on_connected: Callable[[], None] | None = None
        #: called with (mid, reason code) for publishes no ``publish_confirmed`` waits for.
        self.published: Callable[[int, ReasonCode], None] | None = None
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        c.connect_timeout = backend.connect_timeout
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        if backend.username is not None:
            c.username_pw_set(backend.username, backend.password)
        if backend.tls_context is not None:
            # paho wraps the socket and does the handshake inside connect(), in the
            # executor, within connect_timeout; the SSLSocket is then ``_Wire``'s.
            c.tls_set_context(backend.tls_context)
        # Every callback is set before connect(): a resumed session's queued
        # messages arrive right after CONNACK.
        self._message = on_message
        if on_message is not None:
            c.on_message = self._on_message
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_acked
        c.on_unsubscribe = self._on_acked
        c.on_socket_close = self._on_socket_close
        self._client = c
        self._sock: socket.socket | None = None
        self.wire: _Wire | None = None
        self._writing = False
        self._misc: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[bool] | None = None
        #: the TLS alert that ended a connect() paho gave up in the executor.
        self._refusal: ssl.SSLError | None = None
        self._closed: asyncio.Future[None] | None = None
        self._acks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._confirms: dict[int, asyncio.Future[ReasonCode]] = {}
        self.connected = False
        self.closing = False
        #: the broker's Receive Maximum: QoS 1/2 publishes it takes in flight.
        self.server_receive_maximum = 65535
        #: callbacks seen, so that ``_readable`` knows a read made progress.
        self.events = 0

    # -- connect / disconnect -----------------------------------------------

    async def open(self) -> bool:
        """Connect and wait for CONNACK; True when the broker resumed a session."""
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry
        if self._receive_maximum is not None:
            props.ReceiveMaximum = self._receive_maximum
        b = self.backend
        connect = functools.partial(
            self._client.connect,
            b.host,
            b.port,
            b.keepalive,
            clean_start=self._clean_start,
            properties=props,
        )
        return await self._establish(connect)

    async def reconnect(self) -> bool:
        """Connect again with the same client (paho resends what was in flight)."""
        if self.closing:
            raise ClosedError(f"MQTT client {self.client_id!r} is closed")
        self._forget_socket()
        return await self._establish(self._client.reconnect)

    async def _establish(self, connect: Callable[[], MQTTErrorCode]) -> bool:
        b = self.backend
        self._connack = self.loop.create_future()
        self._refusal = None
        job = self.loop.run_in_executor(None, connect)
        try:
            rc = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(lambda _f: self.loop.call_soon_threadsafe(self._drop_socket))
            raise
        except (OSError, ValueError) as exc:
            raise unreachable(b, exc) from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._drop_socket()
            raise connect_failed(
                b, f"cannot connect to the MQTT broker at {b.where}: {mqtt.error_string(rc).rstrip('.')}",
                self._refusal,
            )
        self._attach()
        try:
            async with asyncio.timeout(b.connect_timeout):
                return await self._connack
        except TimeoutError:
            self._drop_socket()
            raise BrokerConnectionError(
                f"the MQTT broker at {b.where} accepted the TCP connection but sent no CONNACK "
                f"within {b.connect_timeout}s; is it an MQTT 5 broker?"
            ) from None
        except BaseException:
            self._drop_socket()
            raise

    @staticmethod
    def _tls_refusal(sock: Any) -> ssl.SSLError | None:
        """The TLS alert waiting on ``sock`` (a broker refusing our certificate), if any."""
        if not isinstance(sock, ssl.SSLSocket):
            return None
        try:
            sock.recv(1)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLError as exc:
            return exc
        except OSError:
            pass
        return None

    def _attach(self) -> None:
        sock = self._client.socket()
        if not isinstance(sock, socket.socket):
            raise BrokerConnectionError(f"MQTT connection to {self.backend.where} closed at once")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        if hasattr(self._client, "_sock"):
            # paho has no hook for its socket object; swapping the attribute it
            # keeps it in is the one way to gather its writes.
            self.wire = _Wire(sock, self)
            self._client._sock = self.wire
        self.loop.add_reader(sock, self._readable)
        self.kick()
        self._misc = self.loop.call_later(_MISC_INTERVAL, self._tick)

    async def close(self, *, end_session: bool = False) -> None:
        """DISCONNECT (ending the session if asked) and wait until it is sent."""
        self.closing = True
        self._fail_waiters(ClosedError(f"MQTT client {self.client_id!r} closed"))
        if self._sock is None or not self.connected:
            self._drop_socket()
            return
        props = None
        if end_session:
            props = _properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        self._closed = self.loop.create_future()
        wire = self.wire
        self._client.disconnect(properties=props)
        self.kick()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._closed
                if wire is not None:
                    await wire.done
        except TimeoutError:
            log.warning("MQTT client %r: DISCONNECT not sent in %ss; dropping the socket",
                        self.client_id, _CLOSE_TIMEOUT)
        finally:
            self._drop_socket()

    def _forget_socket(self) -> None:
        """Make paho drop a socket this link already closed (so reconnect starts clean)."""
        if self._client.socket() is not None and self._sock is None and hasattr(self._client, "_sock"):
            self._client._sock = None

    def _drop_socket(self) -> None:
        """Stop watching and close the socket, whatever state paho is in."""
        self.connected = False
        sock = self._sock
        wire = self.wire
        self._detach(sock)
        if wire is not None:
            wire.failed = True
            wire._finish()
        elif sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._forget_socket()

    def _detach(self, sock: Any) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if sock is not None and (sock is self._sock or sock is self.wire):
            raw = self._sock
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self.loop.remove_reader(raw)  # type: ignore[arg-type]
            if self._writing:
                with contextlib.suppress(ValueError, OSError, RuntimeError):
                    self.loop.remove_writer(raw)  # type: ignore[arg-type]
            self._sock = None
            self._writing = False

    # -- the loop's side ----------------------------------------------------

    def _readable(self) -> None:
        c = self._client
        try:
            for _ in range(_READ_BATCH):
                before = self.events
                rc = c.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None or self.events == before:
                    break
        except Exception as exc:
            # A callback raised inside paho: its packet state cannot be trusted now.
            log.exception("MQTT client %r: error while reading; dropping the connection", self.client_id)
            self.broken(exc)
            return
        self.kick()
        wire = self.wire
        if wire is not None and self._sock is not None:
            wire.read_done()
            if wire.has_input and self._sock is not None:
                # Read already, or decrypted and held by TLS: the kernel has nothing
                # more to say, so no readable event will come for these.
                self.loop.call_soon(self._readable)

    def _writable(self) -> None:
        c = self._client
        wired = self.wire is not None and self._client._sock is self.wire
        if wired:
            self._writing = False
        try:
            c.loop_write()
        except Exception as exc:
            log.exception("MQTT client %r: error while writing; dropping the connection", self.client_id)
            self.broken(exc)
            return
        if not wired and self._sock is not None and self._writing and not c.want_write():
            self.loop.remove_writer(self._sock)
            self._writing = False

    def kick(self) -> None:
        """Get packets paho queued (inside a callback, or before ``_attach``) written.

        With a wire, ``loop_write`` only hands them to it (the wire takes all),
        so it runs on the next iteration; the socket's writer slot is the
        wire's alone.  The loop keeps one writer callback per file descriptor:
        a second ``add_writer`` here would replace the wire's, and when this
        one then removed itself the wire's buffer would wait for ever (seen as
        a CONNECT never sent, so no CONNACK).  Without a wire, watch for
        writability while paho holds bytes it could not write.
        """
        if self._sock is None or self._writing or not self._client.want_write():
            return
        self._writing = True
        if self.wire is not None and self._client._sock is self.wire:
            self.loop.call_soon(self._writable)
        else:
            self.loop.add_writer(self._sock, self._writable)

    def _tick(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        try:
            self._client.loop_misc()
        except Exception as exc:
            log.exception("MQTT client %r: keep-alive failed", self.client_id)
            self.broken(exc)
            return
        self.kick()
        if self._sock is not None:
            self._misc = self.loop.call_later(_MISC_INTERVAL, self._tick)

    def broken(self, exc: BaseException) -> None:
        """The socket failed under paho's feet: close it and report the loss."""
        was = self.connected
        self._drop_socket()
        if was and not self.closing:
            log.debug("MQTT client %r: socket error %r", self.client_id, exc)
            self._lost(ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"))

    # -- paho callbacks (run on the loop, inside loop_read/loop_write) --------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self.events += 1
        fut = self._connack
        if reason.is_failure:
            if fut is not None and not fut.done():
                fut.set_exception(refused(self.backend, reason))
            return
        self.connected = True
        self.server_receive_maximum = getattr(properties, "ReceiveMaximum", 65535)
        if self.on_connected is not None:
            self.on_connected()
        if fut is not None and not fut.done():
            fut.set_result(bool(flags.session_present))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if threading.get_ident() != self.loop_thread:
            return  # connect() failed in the executor: ``_establish`` reports it from its rc
        self.events += 1
        was = self.connected
        self.connected = False
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_exception(connect_failed(
                self.backend,
                f"the MQTT broker at {self.backend.where} closed the connection before "
                f"accepting it: {reason}",
                self.wire.tls_error if self.wire is not None else None,
            ))
        if self.closing:
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            return
        if was:
            self._lost(reason)

    def _lost(self, reason: ReasonCode) -> None:
        self._fail_waiters(
            ConnectionLostError(f"MQTT connection to {self.backend.where} lost: {reason}")
        )
        if self.on_lost is not None:
            try:
                self.on_lost(reason)
            except Exception:
                log.exception("MQTT client %r: error handling a lost connection", self.client_id)

    def _fail_waiters(self, exc: PubSubError) -> None:
        for waiters in (self._acks, self._confirms):
            for fut in waiters.values():
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: a waiter that gave up must not log it
            waiters.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.events += 1
        self._message(client, userdata, message)  # type: ignore[misc]

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        self.events += 1
        fut = self._confirms.pop(mid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(reason)
        elif self.published is not None:
            self.published(mid, reason)

    def _on_acked(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        self.events += 1
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reasons)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self.loop_thread:
            self._detach(sock)
        else:
            # paho gave up inside connect(), before closing this socket: a broker that
            # refused our certificate left its TLS alert on it (TLS 1.3 sends it late).
            self._refusal = self._tls_refusal(sock)
            self.loop.call_soon_threadsafe(self._detach, sock)

    # -- operations ---------------------------------------------------------------

    def _check(self) -> None:
        if not self.connected:
            raise ConnectionLostError(
                f"MQTT client {self.client_id!r} is not connected to {self.backend.where}"
            )

    def publish(
        self, topic: str, payload: bytes, qos: int, props: Properties | None
    ) -> mqtt.MQTTMessageInfo:
        """Hand one message to paho; the caller checked ``connected``."""
        for _ in range(8):
            info = self._client.publish(topic, payload, qos, False, props)
            # QUEUE_SIZE: the next message id is still in flight (ids wrap at 65,535).
            if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break
        self.kick()
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise PubSubError(f"paho refused a publish to {topic}: {mqtt.error_string(info.rc)}")
        return info

    async def publish_confirmed(
        self, topic: str, payload: bytes, qos: int, props: Properties | None
    ) -> ReasonCode:
        """Publish and wait for the broker's PUBACK/PUBCOMP reason code."""
        self._check()
        info = self.publish(topic, payload, qos, props)
        fut: asyncio.Future[ReasonCode] = self.loop.create_future()
        self._confirms[info.mid] = fut
        return await fut

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[ReasonCode]:
        self._check()
        rc, mid = self._client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in filters])
        return await self._await_ack(rc, mid, "SUBACK")

    async def unsubscribe(self, filters: list[str]) -> list[ReasonCode]:
        self._check()
        rc, mid = self._client.unsubscribe(filters)
        return await self._await_ack(rc, mid, "UNSUBACK")

    async def _await_ack(self, rc: MQTTErrorCode, mid: int | None, what: str) -> list[ReasonCode]:
        self.kick()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionLostError(
                f"MQTT client {self.client_id!r}: {mqtt.error_string(rc)} ({self.backend.where})"
            )
        fut: asyncio.Future[list[ReasonCode]] = self.loop.create_future()
        self._acks[mid] = fut
        try:
            async with asyncio.timeout(self.backend.connect_timeout):
                return await fut
        except TimeoutError:
            self._acks.pop(mid, None)
            raise BrokerConnectionError(
                f"the MQTT broker at {self.backend.where} sent no {what} within "
                f"{self.backend.connect_timeout}s"
            ) from None

    def ack(self, mid: int, qos: int) -> None:
        self._check()
        self._client.ack(mid, qos)
        self.kick()
