"""A loopback TCP proxy that can cut the network without touching the broker.

``TcpProxy`` listens on a free port and forwards each connection to an
upstream ``host:port``.  ``blackhole()`` keeps every connection open but
forwards nothing either way (bytes are read and thrown away), the way a
dead link or a stalled peer looks to a client: its requests go out and
never reach the broker, and nothing comes back.  ``drop()`` closes every
connection at once.  ``resume()`` ends the blackhole: the connections that
were in it are closed (their bytes are gone), and new ones are forwarded
again.

``tls`` (optional) makes the proxy a TLS server with that ``SSLContext``
(forwarding plain bytes to a broker that speaks none), so a client's TLS
settings can be tested end to end against brokers without TLS.

``listen`` names the loopback addresses it listens on (``127.0.0.1``; a TLS
test adds ``127.0.0.2``, an address its certificate does not name).

``rewrite`` (optional) makes a filter per connection for the bytes coming
back from the broker: a broker that tells its clients its own address (a
Pulsar lookup answer) can be made to name the proxy instead (see
``tests.brokers.pulsar.LookupRewriter``).

It runs on the test's event loop: a client under test must not block that
loop, which the SDK promises anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

from tests.brokers import free_port

_CHUNK = 1 << 16


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, port: int | None = None,
                 rewrite: Callable[[], Callable[[bytes], bytes]] | None = None,
                 tls: ssl.SSLContext | None = None, listen: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listen = listen
        self._rewrite = rewrite
        self._tls = tls
        #: the port it listens on (given, when a broker must advertise it before it starts)
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._holes = asyncio.Event()  # set: forwarding is off
        #: bytes thrown away while blackholed, client to broker and back
        self.discarded = 0
        #: ``loop.time()`` of each connection accepted (a client reconnecting shows here)
        self.accepted: list[float] = []
        #: index in ``accepted`` -> ``loop.time()`` when that connection ended (either side
        #: closed it, or ``drop``/``resume`` did)
        self.ended: dict[int, float] = {}
        #: index in ``accepted`` -> bytes its client sent into the blackhole (a connection
        #: the client used while the link was stalled, rather than one it left idle)
        self.swallowed: dict[int, int] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, list(self._listen), self.port, ssl=self._tls)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.drop()
            await self._server.wait_closed()
            self._server = None

    def blackhole(self) -> None:
        self._holes.set()

    def resume(self) -> None:
        self._holes.clear()
        self.drop()

    def drop(self) -> None:
        for a, b in list(self._links):
            a.close()
            b.close()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        index = len(self.accepted)
        self.accepted.append(loop.time())
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self.ended[index] = loop.time()
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            back = self._rewrite() if self._rewrite is not None else None
            await asyncio.gather(self._pump(reader, up_writer, index=index),
                                 self._pump(up_reader, writer, back))
        finally:
            self.ended.setdefault(index, loop.time())
            self._links.discard(link)
            writer.close()
            up_writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    rewrite: Callable[[bytes], bytes] | None = None, *, index: int | None = None) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(_CHUNK):
                if self._holes.is_set():
                    self.discarded += len(data)
                    if index is not None:
                        self.swallowed[index] = self.swallowed.get(index, 0) + len(data)
                    continue
                if rewrite is not None:
                    data = rewrite(data)
                writer.write(data)
                await writer.drain()
        writer.close()
