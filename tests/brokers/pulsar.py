"""pulsar-lite, a Pulsar-protocol broker, for the Pulsar backend's tests.

The fixture starts the ``pulsar-lite`` binary from the PyPI package of that
name on a free port, with a temporary ``--db-path`` (the broker writes
``<db-path>.rocksdb`` beside it, so both live in one temporary directory) and
a config file that turns off its metrics server (otherwise every instance
binds 0.0.0.0:8080).  It is stopped by PID at the end of the session and the
directory removed.

``TG_PULSAR_URL`` names an existing broker instead (a real Pulsar cluster,
``pulsar://host:6650``): nothing is started, the quirks below do not apply,
the fixture cannot restart it, ``TG_PULSAR_ADMIN_URL`` gives its admin API
and, when ``TG_PULSAR_AUTH=1`` says the cluster checks tokens,
``TG_PULSAR_API_KEY`` its token (a wrong one is then tried in case 16).

Quirks of pulsar-lite 0.2.0 (see BROKERS.md): draining a large backlog
delivers duplicates; no admin REST API; a second consumer on an exclusive
subscription makes it drop the whole connection instead of answering
ConsumerBusy (the backend refuses that case itself within one process);
chunked messages are unreliable.  It checks no credentials, so
``bad_credentials_config`` is None.

Seen here 2026-12-07 (RESET_LEAVES_CONSUMERS): when a client's connection
ends in a TCP reset, as a process killed by SIGKILL with unread data in its
socket does, pulsar-lite logs "Connection error ... Connection reset by peer"
and skips the clean-up it does for a closed connection ("Closing connection
conn-N", "Consumer N removed").  The dead connection's consumers stay on their
subscriptions, also across test runs against the same broker.  Messages
dispatched to them are lost to the subscription: in a probe after a reset, 1
of 10 new messages went to such a consumer and did not arrive at the live one
within the 3 s it waited.  The client numbers its
consumers 0, 1, 2 ... in each process, so a restarted process subscribes with
the ids of its killed predecessor.  The broker then answers "Consumer N
already exists" by dropping the whole connection, until the subscribe times
out and the SDK subscribes again under a fresh id.  Apache Pulsar removes a
connection's consumers however it ends.

pulsar-lite answers every topic lookup with its own listen address (``--addr``,
an unspecified address shown as loopback) and has no option to advertise
another, nor a TLS address (``brokerServiceUrlTls`` is empty), so a client
reaching it through a ``TcpProxy`` would open its topic connections straight
to the broker, and a ``pulsar+ssl://`` client would find nowhere to go.
``LookupRewriter`` makes the proxy stand in for the missing options: it
rewrites the lookup answers to name the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from . import (
    DUPLICATES_UNDER_LOAD,
    NO_ADMIN_API,
    Broker,
    BrokerUnavailable,
    async_wait_for_port,
    free_port,
    port_open,
    refused_port,
    wait_for_port,
)

#: a second consumer on an exclusive subscription drops the connection (no ConsumerBusy).
EXCLUSIVE_DROPS_CONNECTION = "exclusive-drops-connection"
#: chunked (larger than maxMessageSize) messages do not arrive reliably.
CHUNKING_UNRELIABLE = "chunking-unreliable"
#: a client connection that ends in a TCP reset (a process killed with unread
#: data in its socket) leaves its consumers subscribed for good: messages
#: dispatched to them are never delivered again, and a new consumer that reuses
#: one's id on that subscription has its whole connection dropped.
RESET_LEAVES_CONSUMERS = "reset-leaves-consumers"

HOW_TO = (
    "install pulsar-lite with `pip install pulsar-lite` (the tests start it themselves), "
    "or point TG_PULSAR_URL at a running Pulsar (pulsar://host:6650)"
)
CONFIG = "[metrics]\nenabled = false\n"


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | 0x80 if n else low)
        if not n:
            return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, int, bytes]]:
    """``(number, wire type, value bytes)`` of each field of one protobuf message."""
    out: list[tuple[int, int, bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        start = i
        if wire == 0:
            _, i = _read_varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            size, start = _read_varint(buf, i)
            i = start + size
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated")
        out.append((number, wire, buf[start:i]))
    return out


def _encode(fields: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray()
    for number, wire, value in fields:
        out += _varint(number << 3 | wire)
        if wire == 2:
            out += _varint(len(value))
        out += value
    return bytes(out)


class LookupRewriter:
    """A ``TcpProxy`` ``rewrite`` factory: Pulsar frames from the broker pass
    whole, except lookup answers naming ``broker_url``, which name the proxy:
    ``brokerServiceUrl`` becomes ``proxy_url`` and, when ``proxy_tls_url`` is
    given, ``brokerServiceUrlTls`` becomes it (pulsar-lite leaves that empty, and
    a ``pulsar+ssl://`` client connects to it).

    Frames are ``[total size][command size][command][payload]``; the command is
    a protobuf ``BaseCommand`` whose lookup answer is a sub-message with the URL
    in field 1 and the TLS URL in field 2.  Only the command is re-encoded (a
    message's checksum covers its payload, not the command).  ``rewritten``
    counts the answers changed.
    """

    def __init__(self, broker_url: str, proxy_url: str, proxy_tls_url: str | None = None) -> None:
        self.old = broker_url.encode()
        self.new = proxy_url.encode()
        self.new_tls = proxy_tls_url.encode() if proxy_tls_url else None
        self.rewritten = 0

    def _command(self, command: bytes) -> bytes:
        fields = _fields(command)
        for k, (number, wire, value) in enumerate(fields):
            if wire != 2:
                continue
            try:
                inner = _fields(value)
            except (ValueError, IndexError):
                continue  # a string or bytes field, not a message
            if (1, 2, self.old) not in inner:
                continue
            kept = [f for f in inner if f[0] not in (1, 2)]
            head = [(1, 2, self.new)] + ([(2, 2, self.new_tls)] if self.new_tls else [])
            fields[k] = (number, wire, _encode(head + kept))
            self.rewritten += 1
            return _encode(fields)
        return command

    def __call__(self) -> Callable[[bytes], bytes]:
        pending = bytearray()

        def rewrite(data: bytes) -> bytes:
            pending.extend(data)
            out = bytearray()
            while len(pending) >= 8:
                end = 4 + int.from_bytes(pending[:4], "big")
                if len(pending) < end:
                    break
                command_end = 8 + int.from_bytes(pending[4:8], "big")
                command = bytes(pending[8:command_end])
                if self.old in command:
                    command = self._command(command)
                rest = bytes(pending[command_end:end])
                body = len(command).to_bytes(4, "big") + command + rest
                out += len(body).to_bytes(4, "big") + body
                del pending[:end]
            return bytes(out)

        return rewrite


def _binary() -> str:
    try:
        from pulsar_lite.binary_finder import find_pulsar_lite_binary
    except ImportError as exc:
        raise BrokerUnavailable(f"pulsar-lite is not installed; {HOW_TO}") from exc
    try:
        path = str(find_pulsar_lite_binary())
    except FileNotFoundError as exc:
        raise BrokerUnavailable(f"the pulsar-lite binary was not found ({exc}); {HOW_TO}") from exc
    if not os.access(path, os.X_OK):
        raise BrokerUnavailable(f"pulsar-lite binary {path} is not executable; {HOW_TO}")
    return path


class PulsarBroker(Broker):
    name: ClassVar[str] = "pulsar"
    quirks: ClassVar[frozenset[str]] = frozenset(
        {DUPLICATES_UNDER_LOAD, NO_ADMIN_API, EXCLUSIVE_DROPS_CONNECTION, CHUNKING_UNRELIABLE,
         RESET_LEAVES_CONSUMERS}
    )
    can_restart: ClassVar[bool] = True
    restart_keeps_data: ClassVar[bool] = True

    def __init__(self) -> None:
        self.url = ""
        self.admin_url: str | None = None
        self.api_key: str | None = None
        self.external = False
        self.port = 0
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._binary = ""

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        url = os.environ.get("TG_PULSAR_URL")
        if url:
            self._use_external(url)
            return
        self._binary = _binary()
        self.workdir = Path(tempfile.mkdtemp(prefix="tg-pulsar-"))
        (self.workdir / "pulsar-lite.toml").write_text(CONFIG)
        self.port = free_port()
        self.url = f"pulsar://127.0.0.1:{self.port}"
        self._spawn()
        if not wait_for_port("127.0.0.1", self.port, 30):
            tail = self._log_tail()
            self.stop()
            raise BrokerUnavailable(
                f"pulsar-lite did not open 127.0.0.1:{self.port} within 30 s; log tail:\n{tail}\n{HOW_TO}"
            )

    def _use_external(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port or 6650
        if not port_open(host, port, 3.0):
            raise BrokerUnavailable(f"TG_PULSAR_URL={url} does not answer on {host}:{port}; {HOW_TO}")
        self.url = url
        self.external = True
        self.admin_url = os.environ.get("TG_PULSAR_ADMIN_URL") or None
        self.api_key = os.environ.get("TG_PULSAR_API_KEY") or None
        # A real broker: none of pulsar-lite's defects, and we must not restart it.
        self.quirks = frozenset()  # type: ignore[misc]
        self.can_restart = False  # type: ignore[misc]

    def _spawn(self) -> None:
        assert self.workdir is not None
        with open(self.workdir / "pulsar-lite.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self._binary,
                    "--config", str(self.workdir / "pulsar-lite.toml"),
                    "--addr", f"127.0.0.1:{self.port}",
                    "--db-path", str(self.workdir / "db"),
                    "--log-level", "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )

    def _log_tail(self) -> str:
        if self.workdir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self.workdir / "pulsar-lite.log").read_text(errors="replace")[-2000:]
        return ""

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        self._terminate()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    async def restart(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL), then the same binary on the same port and data path."""
        if self.external:
            raise NotImplementedError("the pulsar fixture does not restart an external broker")
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            for _ in range(200):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        for _ in range(100):  # the old listener must be gone before the new one binds
            if not port_open("127.0.0.1", self.port, 0.1):
                break
            await asyncio.sleep(0.05)
        self._spawn()
        if not await async_wait_for_port("127.0.0.1", self.port, 30):
            raise BrokerUnavailable(
                f"pulsar-lite did not come back on port {self.port}; log tail:\n{self._log_tail()}"
            )

    # -- configuration ----------------------------------------------------------

    def backend_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"pulsar_host": self.url}
        if self.admin_url:
            config["pulsar_admin_url"] = self.admin_url
        if self.api_key:
            config["pulsar_api_key"] = self.api_key
        return config

    def refused_config(self) -> dict[str, Any]:
        return {"pulsar_host": f"pulsar://127.0.0.1:{refused_port()}"}

    def bad_credentials_config(self) -> dict[str, Any] | None:
        """pulsar-lite checks no tokens; an external broker does when TG_PULSAR_AUTH=1."""
        if self.external and os.environ.get("TG_PULSAR_AUTH", "") not in ("", "0", "false", "no"):
            return {"pulsar_api_key": "not-a-valid-token-7c1e"}
        return None
