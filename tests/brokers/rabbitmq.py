"""RabbitMQ for the tests: the shared broker at RABBITMQ_HOST/RABBITMQ_PORT.

It is already running on this kind of machine (Debian ``rabbitmq-server``);
this fixture only checks it answers.  ``restart()`` (conformance case 11) runs
``rabbitmqctl stop_app`` / ``start_app`` on that shared node, as a subprocess
so the event loop keeps running, then waits until AMQP answers again.  Only a
local broker whose ``rabbitmqctl`` we may run can be restarted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from typing import Any, ClassVar

from tests.brokers import Broker, BrokerUnavailable, port_open, refused_port

HOST = os.environ.get("RABBITMQ_HOST", "127.0.0.1")
PORT = int(os.environ.get("RABBITMQ_PORT", "5672"))
USERNAME = os.environ.get("RABBITMQ_USERNAME", "guest")
PASSWORD = os.environ.get("RABBITMQ_PASSWORD", "guest")
VHOST = os.environ.get("RABBITMQ_VHOST", "/")

_LOCAL = HOST in ("127.0.0.1", "localhost", "::1")
_CTL = shutil.which("rabbitmqctl")
#: Longest a restart may take (stop_app + start_app of a quorum-queue node).
RESTART_TIMEOUT = 120.0


def _may_run_rabbitmqctl() -> bool:
    """rabbitmqctl needs the node's Erlang cookie: root, or the rabbitmq user."""
    if _CTL is None or not _LOCAL:
        return False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return True
    return os.access("/var/lib/rabbitmq/.erlang.cookie", os.R_OK) or os.access(
        os.path.expanduser("~/.erlang.cookie"), os.R_OK
    )


async def rabbitmqctl(*args: str, limit: float = 60.0) -> str:
    """Run ``rabbitmqctl args`` without blocking the loop; its output, or RuntimeError."""
    if _CTL is None:
        raise RuntimeError("rabbitmqctl is not installed")
    proc = await asyncio.create_subprocess_exec(
        _CTL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(limit):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} did not finish in {limit}s") from None
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}): {text}")
    return text


async def amqp_answers(host: str = HOST, port: int = PORT) -> BaseException | None:
    """None once the broker completes an AMQP handshake (an open port is not
    enough while the node boots); otherwise why it did not."""
    from trustgraph_pubsub.backends.rabbitmq import RabbitMQBackend

    backend = RabbitMQBackend(host=host, port=port, username=USERNAME, password=PASSWORD,
                              vhost=VHOST)
    try:
        await backend._connection()
        return None
    except Exception as exc:
        return exc
    finally:
        await backend.close()


class RabbitMQBroker(Broker):
    name = "rabbitmq"
    quirks: ClassVar[frozenset[str]] = frozenset()
    can_restart: ClassVar[bool] = _may_run_rabbitmqctl()
    restart_keeps_data: ClassVar[bool] = True

    def start(self) -> None:
        if not port_open(HOST, PORT, timeout=2.0):
            raise BrokerUnavailable(
                f"RabbitMQ is not reachable at {HOST}:{PORT}; start it with "
                "`rabbitmq-server -detached` (or `rabbitmqctl start_app` if the node is up), "
                "or point RABBITMQ_HOST/RABBITMQ_PORT at a running broker"
            )

    def backend_config(self) -> dict[str, Any]:
        return {
            "rabbitmq_host": HOST,
            "rabbitmq_port": PORT,
            "rabbitmq_username": USERNAME,
            "rabbitmq_password": PASSWORD,
            "rabbitmq_vhost": VHOST,
        }

    def refused_config(self) -> dict[str, Any]:
        return {"rabbitmq_host": "127.0.0.1", "rabbitmq_port": refused_port()}

    def bad_credentials_config(self) -> dict[str, Any]:
        return {"rabbitmq_username": USERNAME, "rabbitmq_password": f"wrong-{uuid.uuid4().hex}"}

    async def restart(self, kill: bool = False) -> None:
        """``stop_app`` then ``start_app`` on the shared node; wait until AMQP answers.

        The shared node is the machine's own service, so ``kill`` cannot SIGKILL
        it: ``stop_app`` drops every connection at once, which is what a
        client sees of a dead broker.
        """
        if not self.can_restart:
            raise NotImplementedError("rabbitmqctl is not usable here (not local, or no cookie)")
        await rabbitmqctl("stop_app", limit=RESTART_TIMEOUT)
        try:
            await rabbitmqctl("start_app", limit=RESTART_TIMEOUT)
        except Exception:
            # Never leave the shared node stopped for every later test: try once more.
            await rabbitmqctl("start_app", limit=RESTART_TIMEOUT)
        deadline = time.monotonic() + RESTART_TIMEOUT
        while (why := await amqp_answers()) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"RabbitMQ at {HOST}:{PORT} did not answer after start_app: {why!r}"
                )
            await asyncio.sleep(0.2)
