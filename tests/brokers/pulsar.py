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

pulsar-lite answers every topic lookup with its own listen address (``--addr``,
an unspecified address shown as loopback) and has no option to advertise
another, so a client reaching it through a ``TcpProxy`` would open its topic
connections straight to the broker.  ``LookupRewriter`` makes the proxy stand
in for the missing option: it rewrites that address in the lookup answers to
the proxy's.
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
    wait_for_port,
)

#: a second consumer on an exclusive subscription drops the connection (no ConsumerBusy).
EXCLUSIVE_DROPS_CONNECTION = "exclusive-drops-connection"
#: chunked (larger than maxMessageSize) messages do not arrive reliably.
CHUNKING_UNRELIABLE = "chunking-unreliable"

HOW_TO = (
    "install pulsar-lite with `pip install pulsar-lite` (the tests start it themselves), "
    "or point TG_PULSAR_URL at a running Pulsar (pulsar://host:6650)"
)
CONFIG = "[metrics]\nenabled = false\n"


class LookupRewriter:
    """A ``TcpProxy`` ``rewrite`` factory: Pulsar frames from the broker pass whole,
    with ``broker_url`` in their command part (a lookup answer's
    ``brokerServiceUrl``) replaced by ``proxy_url``.

    The two URLs must be the same length (ports of as many digits), so no
    protobuf length changes; the checksum covers only a message's payload,
    not the command.  ``rewritten`` counts the answers changed.
    """

    def __init__(self, broker_url: str, proxy_url: str) -> None:
        self.old, self.new = broker_url.encode(), proxy_url.encode()
        if len(self.old) != len(self.new):
            raise ValueError(f"{broker_url!r} and {proxy_url!r} differ in length")
        self.rewritten = 0

    def __call__(self) -> Callable[[bytes], bytes]:
        pending = bytearray()

        def rewrite(data: bytes) -> bytes:
            pending.extend(data)
            out = bytearray()
            while len(pending) >= 8:
                # [total size][command size][command][payload...], sizes big-endian u32
                end = 4 + int.from_bytes(pending[:4], "big")
                if len(pending) < end:
                    break
                frame = pending[:end]
                command_end = 8 + int.from_bytes(frame[4:8], "big")
                command = bytes(frame[8:command_end])
                if self.old in command:
                    frame[8:command_end] = command.replace(self.old, self.new)
                    self.rewritten += 1
                out += frame
                del pending[:end]
            return bytes(out)

        return rewrite


def same_width_port(port: int) -> int:
    """A free port with as many digits as ``port`` (for ``LookupRewriter``)."""
    while len(str(candidate := free_port())) != len(str(port)):
        pass
    return candidate


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
        {DUPLICATES_UNDER_LOAD, NO_ADMIN_API, EXCLUSIVE_DROPS_CONNECTION, CHUNKING_UNRELIABLE}
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
        return {"pulsar_host": f"pulsar://127.0.0.1:{free_port()}"}

    def bad_credentials_config(self) -> dict[str, Any] | None:
        """pulsar-lite checks no tokens; an external broker does when TG_PULSAR_AUTH=1."""
        if self.external and os.environ.get("TG_PULSAR_AUTH", "") not in ("", "0", "false", "no"):
            return {"pulsar_api_key": "not-a-valid-token-7c1e"}
        return None
