"""Real brokers for the tests: one ``Broker`` subclass per backend.

A session-scoped registry (``tests/conftest.py``) starts each broker the
first time a test asks for it and stops it at the end of the session.

* ``start()`` brings the broker up (or checks it is reachable) and raises
  ``BrokerUnavailable`` with a message that says how to start it.  The
  conftest turns that into a skip, or a failure when ``TG_REQUIRE_BROKERS=1``.
* ``backend_config()`` gives the flat ``get_pubsub`` keys for this broker.
* ``quirks`` names the broker build's own defects (not backend capabilities);
  a test that a quirk defeats says so in its skip/xfail reason.
* ``restart()`` stops and starts the broker process, keeping its data, for
  conformance case 11; ``can_restart`` says whether this fixture can.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import time
from typing import Any, ClassVar

from bootstrap.embedded import free_port as free_port  # re-exported for the fixtures
from bootstrap.embedded import port_open as port_open
from trustgraph_pubsub import PubSubBackend, get_pubsub

# Quirk names shared by the fixtures and the tests that check for them.
NOT_PERSISTENT = "not-persistent-across-restart"  # restart loses every message
DUPLICATES_UNDER_LOAD = "duplicates-under-load"  # large backlog drains deliver duplicates
NO_IDEMPOTENT_PRODUCER = "no-idempotent-producer"  # InitProducerId fails
SLOW_FIRST_JOIN = "slow-first-join"  # a consumer group's first JoinGroup takes seconds
NO_ADMIN_API = "no-admin-api"  # no REST admin endpoint
# two members of a consumer group leaving at once can leave the departed leader
# in the group: every later member's SyncGroup fails (rebalance in progress) forever
STUCK_GROUP_AFTER_CONCURRENT_LEAVE = "stuck-group-after-concurrent-leave"


class BrokerUnavailable(Exception):
    """The broker cannot be reached or started; the message says how to fix it."""


def refused_port() -> int:
    """A port where nothing listens, below the kernel's ephemeral port range.

    A port from ``free_port()`` lies in that range, where a connect can meet
    itself: the kernel may give the client that very port as its own source
    port, and the socket connects to itself (TCP simultaneous open) instead
    of being refused.  Seen once in CI: MQTT answered "protocol error" where
    "refused" was due.  No source port is ever chosen below the range.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise BrokerUnavailable(f"no free port below {low} to stand for a refused connection")


def require_brokers() -> bool:
    return os.environ.get("TG_REQUIRE_BROKERS", "") not in ("", "0", "false", "no")


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        time.sleep(0.1)
    return False


async def async_wait_for_port(host: str, port: int, timeout: float = 30.0) -> bool:  # noqa: ASYNC109
    """Whether ``host:port`` accepts a connection within ``timeout`` seconds, without blocking."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
            w.close()
            return True
        except (TimeoutError, OSError):
            await asyncio.sleep(0.1)
    return False


def terminate(proc: subprocess.Popen[Any] | None, grace: float = 20.0) -> None:
    """Stop a broker process this fixture started: SIGTERM (brokers save their
    data on it), then SIGKILL after ``grace`` seconds.  For ``stop()``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def async_terminate(proc: subprocess.Popen[Any] | None, grace: float = 20.0) -> None:
    """``terminate`` without blocking the event loop (the wait runs in a thread);
    for ``restart()``, which runs on the test's loop beside live clients."""
    await asyncio.to_thread(terminate, proc, grace)


class Broker:
    """Base class: a real broker one backend talks to."""

    name: ClassVar[str]
    quirks: ClassVar[frozenset[str]] = frozenset()
    can_restart: ClassVar[bool] = False
    #: a restart keeps queued q1 messages (False for a broker build that keeps data in memory)
    restart_keeps_data: ClassVar[bool] = True

    def start(self) -> None:
        """Start the broker or check it is reachable; raise ``BrokerUnavailable``."""

    def stop(self) -> None:
        """Stop a broker this fixture started; leave shared ones running."""

    def backend_config(self) -> dict[str, Any]:
        return {}

    def make_backend(self, **overrides: Any) -> PubSubBackend:
        config = {"pubsub_backend": self.name, **self.backend_config(), **overrides}
        return get_pubsub(**config)

    def refused_config(self) -> dict[str, Any]:
        """``get_pubsub`` overrides that point at a port where nothing listens.

        Use a distinctive port (``refused_port()``): conformance case 16 checks
        that the ``BrokerConnectionError`` message names one of these values.
        Raise ``NotImplementedError`` (the default) where there is no network;
        the battery then skips that sub-case and says why.
        """
        raise NotImplementedError

    def bad_credentials_config(self) -> dict[str, Any] | None:
        """Overrides with wrong credentials, or None if this broker checks none.

        Case 16 expects ``AuthenticationError`` from the first ``create_*`` and
        checks that no secret option's value (``Option.secret`` in the factory
        table) shows in its message or in the backend's repr.
        """
        return None

    async def restart(self, kill: bool = False) -> None:
        """Stop and start the broker process, keeping its data (``kill``: SIGKILL, no shutdown)."""
        raise NotImplementedError(f"{self.name} fixture cannot restart its broker")


_BROKER_CLASSES: dict[str, str] = {
    "memory": "tests.brokers.memory:MemoryBroker",
    "pulsar": "tests.brokers.pulsar:PulsarBroker",
    "kafka": "tests.brokers.kafka:KafkaBroker",
    "rabbitmq": "tests.brokers.rabbitmq:RabbitMQBroker",
    "mqtt": "tests.brokers.mqtt:MQTTBroker",
}


def broker_class(name: str) -> type[Broker]:
    import importlib

    module, _, attr = _BROKER_CLASSES[name].partition(":")
    cls: type[Broker] = getattr(importlib.import_module(module), attr)
    return cls
