"""``_Wire``: the socket that stands in for paho's own, batching its writes.

Only MQTT has this: paho writes each packet with its own ``send`` and reads a
packet a few bytes at a time, so the backend drives the socket itself; the
other brokers' clients own their I/O (C++ threads, asyncio transports).

Over TLS the socket is paho's ``ssl.SSLSocket`` (handshake done), and three
things differ from a plain socket, all handled here:

* a read or a write may raise ``SSLWantReadError``/``SSLWantWriteError``: a
  read that wants either is paho's "nothing yet" (``BlockingIOError``); a
  write that wants writability waits for ``add_writer`` as a plain one does;
  the rare read that wants writability, or write that wants readability
  (TLS renegotiation, a key update), is retried when the socket becomes
  writable (``_flush``) or readable (``_Link._readable`` calls ``read_done``);
* a write that raised keeps the whole buffer: OpenSSL has already taken part
  of it and must be given the same bytes again (more may follow; it writes
  from where it stopped and then reports the whole length as sent), so the
  buffer is only ever cut by what ``send`` returned;
* decrypted bytes may wait inside the SSL object (``pending()``) with the
  kernel socket empty, so no readable event comes for them: ``has_input``
  counts them and ``_Link._readable`` reads on while it is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from typing import TYPE_CHECKING

from .config import _CLOSE_TIMEOUT, _RECV_CHUNK, _WIRE_LOW

if TYPE_CHECKING:
    from .connection import _Link


class _Wire:
    """paho's socket, with writes gathered and sent once per loop iteration.

    paho writes every packet with its own ``send`` call; acknowledging or
    publishing a burst of messages then costs one system call (and, with
    TCP_NODELAY, one TCP segment) each.  This stands in for the socket: a
    ``send`` appends to a buffer and schedules one flush on the loop, where
    the buffer goes out in as few ``send`` calls as the kernel takes; what it
    does not take is written by an ``add_writer`` callback.  ``close`` sends
    what is left (paho closes right after queueing DISCONNECT) before closing.
    """

    def __init__(self, sock: socket.socket, link: _Link) -> None:
        self.sock = sock
        self._link = link
        self._loop = link.loop
        self._out = bytearray()
        self._in = b""
        self._pos = 0
        self._scheduled = False
        self._writing = False
        self._closing = False
        self._reading = False
        self._finished = False
        self._deadline: asyncio.TimerHandle | None = None
        self.failed = False
        #: the TLS error that ended a read (for the message of a refused connection).
        self.tls_error: ssl.SSLError | None = None
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._read_wants_write = False
        self._write_wants_read = False
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._drained: list[asyncio.Future[None]] = []

    # -- what paho calls ------------------------------------------------------

    def send(self, data: bytes | bytearray) -> int:
        if self.failed or self._closing:
            raise OSError("MQTT connection closed")
        self._out += data
        if not self._scheduled and not self._writing:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return len(data)

    def recv(self, size: int) -> bytes:
        """paho reads a packet a few bytes at a time; serve that from one big read."""
        data, pos = self._in, self._pos
        if pos >= len(data):
            data = self._read(max(size, _RECV_CHUNK))
            if len(data) <= size:
                self._in, self._pos = b"", 0
                return data
            pos = 0
        end = pos + size
        if end >= len(data):
            self._in, self._pos = b"", 0
            return data[pos:] if pos else data
        self._in, self._pos = data, end
        return data[pos:end]

    def _read(self, size: int) -> bytes:
        if not self._tls:
            return self.sock.recv(size)
        try:
            return self.sock.recv(size)
        except ssl.SSLWantReadError:
            raise BlockingIOError from None
        except ssl.SSLWantWriteError:
            # Retried by ``_flush`` once the socket is writable.
            self._read_wants_write = True
            if not self._writing and not self.failed:
                self._writing = True
                self._loop.add_writer(self.sock, self._flush)
            raise BlockingIOError from None
        except ssl.SSLError as exc:
            self.tls_error = exc
            raise

    def pending(self) -> int:
        """Bytes readable without waiting for the socket: our buffer's and the SSL object's."""
        held = len(self._in) - self._pos
        if self._tls:
            with contextlib.suppress(OSError, ValueError):
                held += self.sock.pending()  # type: ignore[attr-defined]
        return held

    @property
    def has_input(self) -> bool:
        """Bytes read from the socket (or decrypted by TLS) that paho has not taken yet."""
        return self.pending() > 0

    def read_done(self) -> None:
        """``_Link`` read the socket: a TLS write that wanted it readable can go on."""
        if self._write_wants_read:
            self._write_wants_read = False
            self._flush()

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        """Send what is buffered, then close once the broker has read it all.

        paho calls this right after queueing DISCONNECT.  The socket is only
        half-closed once the buffer is out, and closed when the broker closes
        its side: by then it has processed every ack before the DISCONNECT.
        Closing at once could let a consumer that takes this session over next
        overtake acks still unread in the broker's socket buffer, and have
        those messages delivered again.  At once when off the loop or failed.
        """
        if self._closing:
            return
        self._closing = True
        if self.failed or not self._on_loop():
            self._finish()
            return
        self._deadline = self._loop.call_later(_CLOSE_TIMEOUT, self._finish)
        self._flush()
        if not self._out and not self.failed:
            self._half_close()

    def _half_close(self) -> None:
        if self._reading or self._finished:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self._loop.add_reader(self.sock, self._await_eof)
        except (OSError, ValueError, RuntimeError):
            self._finish()
            return
        self._reading = True

    def _await_eof(self) -> None:
        try:
            data = self.sock.recv(_RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._finish()

    # -- the loop's side ----------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._out)

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._link.loop_thread

    def _flush(self) -> None:
        self._scheduled = False
        if self._read_wants_write:
            self._read_wants_write = False
            self._loop.call_soon(self._link._readable)
        out = self._out
        if self.failed:
            return
        n = 0
        if out:
            self._write_wants_read = False
            try:
                # Over TLS a write that raised must be retried with the same bytes
                # first: ``out`` is only ever cut by what ``send`` returned.
                n = self.sock.send(out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLWantReadError:
                self._write_wants_read = True  # ``read_done`` retries; no busy writer meanwhile
            except OSError as exc:
                self._fail(exc)
                return
        if n:
            del out[:n]
        if out and not self._write_wants_read:
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self.sock, self._flush)
        else:
            if self._writing:
                self._writing = False
                self._loop.remove_writer(self.sock)
            if self._closing and not out:
                self._half_close()
        if self._drained and (len(out) < _WIRE_LOW or not out):
            waiters, self._drained = self._drained, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def drained(self, *, empty: bool = False) -> None:
        """Wait until the buffer is below the low-water mark, or ``empty`` (or the wire failed)."""
        while not (self.failed or self._closing):
            if not self._out if empty else len(self._out) < _WIRE_LOW:
                return
            fut: asyncio.Future[None] = self._loop.create_future()
            self._drained.append(fut)
            await fut

    def _fail(self, exc: BaseException) -> None:
        self.failed = True
        self._out.clear()
        self._finish()
        if not self._closing:
            self._link.broken(exc)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._deadline is not None:
            self._deadline.cancel()
        if self._reading:
            self._reading = False
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_reader(self.sock)
        if self._writing:
            self._writing = False
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_writer(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()
        waiters, self._drained = self._drained, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if self._on_loop():
            if not self.done.done():
                self.done.set_result(None)
        else:
            self._loop.call_soon_threadsafe(self._set_done)

    def _set_done(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

