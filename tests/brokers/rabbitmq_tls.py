"""A private RabbitMQ node with a TLS (amqps) listener on loopback, for the TLS tests.

The machine's shared RabbitMQ (``tests/brokers/rabbitmq.py``) speaks plain
AMQP and is not ours to reconfigure, so ``RabbitMQTLSNode`` starts a second
node of the same Debian ``rabbitmq-server`` install beside it: its own node
name (``tgtls<random>@localhost``), a plain and an amqps listener and an Erlang
distribution port on free loopback ports, and every file it writes (database,
logs, config, Erlang cookie) in one temporary folder.  The amqps listener
uses the certificates of ``tests.brokers.tls.make_certs``, asks clients for a
certificate (``verify_peer``) but does not require one.

The Debian wrapper scripts in ``/usr/sbin`` re-run everything as the
``rabbitmq`` user, with that user's home and cookie; the scripts they wrap,
in ``/usr/lib/rabbitmq/bin``, are run directly instead, with ``HOME`` set to
the folder so that the node and ``rabbitmqctl`` share a cookie of their own.
Every ``RABBITMQ_*``/``ERL_*`` variable of the test process is left out of the
node's environment (``RABBITMQ_PORT`` there is the client's).  The node is
started in its own process group; ``stop()`` asks it to stop with
``rabbitmqctl stop``, then kills what is left of the group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tests.brokers import BrokerUnavailable, free_port, wait_for_port
from tests.brokers.tls import Certs

#: Debian's unwrapped scripts (``/usr/sbin/rabbitmq-server`` would ``su rabbitmq``).
SBIN = Path(os.environ.get("RABBITMQ_TLS_TEST_SBIN", "/usr/lib/rabbitmq/bin"))
HOW_TO = (
    "install RabbitMQ (`apt-get install rabbitmq-server`; the tests run the scripts in "
    "/usr/lib/rabbitmq/bin, or set RABBITMQ_TLS_TEST_SBIN to the folder holding "
    "rabbitmq-server and rabbitmqctl)"
)
#: Longest a node may take to boot on a busy two-core machine.
START_TIMEOUT = 180.0


class RabbitMQTLSNode:
    """One private node; ``start()``, then ``backend_config()``, then ``stop()``."""

    def __init__(self, folder: Path, certs: Certs, fail_if_no_peer_cert: bool = False) -> None:
        self.folder = folder
        self.certs = certs
        self.fail_if_no_peer_cert = fail_if_no_peer_cert
        self.node = f"tgtls{uuid.uuid4().hex[:10]}@localhost"
        self.amqp_port = free_port()
        self.amqps_port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "server.out"

    # -- environment --------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        f = self.folder
        env.update(
            HOME=str(f / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(f / "mnesia"),
            RABBITMQ_LOG_BASE=str(f / "log"),
            RABBITMQ_CONFIG_FILE=str(f / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(f / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(f / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(f / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(f / "node.pid"),
            # the distribution listens on loopback only, as the shared node's does
            ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _write_files(self) -> None:
        f = self.folder
        for sub in ("home", "mnesia", "log"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        cookie = f / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (f / "enabled_plugins").write_text("[].\n")
        (f / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's (NODENAME=rabbit@...)
        c = self.certs
        (f / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"listeners.ssl.1 = 127.0.0.1:{self.amqps_port}\n"
            f"ssl_options.cacertfile = {c.ca}\n"
            f"ssl_options.certfile = {c.server_cert}\n"
            f"ssl_options.keyfile = {c.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            f"ssl_options.fail_if_no_peer_cert = {str(self.fail_if_no_peer_cert).lower()}\n"
            "ssl_options.versions.1 = tlsv1.3\n"
            "ssl_options.versions.2 = tlsv1.2\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    # -- control ------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> args`` with the node's cookie; never raises on failure."""
        try:
            return subprocess.run(
                [str(SBIN / "rabbitmqctl"), "-n", self.node, *args], env=self._env(),
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, -1, "", f"timed out after {timeout}s")

    def _tail(self) -> str:
        lines: list[str] = []
        for path in (self.log, self.folder / "log" / f"{self.node}.log"):
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()[-15:]
        return "\n".join(lines)

    def start(self) -> None:
        """Boot the node and wait until its amqps listener accepts; ``BrokerUnavailable``
        (with the node's last log lines) if it cannot."""
        server = SBIN / "rabbitmq-server"
        if not server.exists() or not (SBIN / "rabbitmqctl").exists():
            raise BrokerUnavailable(f"{server} not found; {HOW_TO}")
        if shutil.which("erl") is None and not Path("/usr/lib/erlang").exists():
            raise BrokerUnavailable(f"Erlang not found; {HOW_TO}")
        self._write_files()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(server)], env=self._env(), cwd=self.folder, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(
                    f"the private RabbitMQ node {self.node} exited ({self.proc.returncode}) "
                    f"while starting:\n{self._tail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise BrokerUnavailable(
                    f"the private RabbitMQ node {self.node} did not start in "
                    f"{START_TIMEOUT:.0f}s:\n{self._tail()}"
                )
            # fails at once while the node is not yet registered with epmd
            if self.ctl("await_startup", "--timeout", "30", timeout=min(left, 45)).returncode == 0:
                break
            time.sleep(0.5)
        if not wait_for_port("127.0.0.1", self.amqps_port, timeout=30):
            self.stop()
            raise BrokerUnavailable(
                f"the private RabbitMQ node {self.node} started but its amqps listener "
                f"127.0.0.1:{self.amqps_port} does not accept:\n{self._tail()}"
            )

    def stop(self) -> None:
        """``rabbitmqctl stop``, then SIGKILL to whatever is left of the node's process group."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self.ctl("stop", timeout=60)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:  # beam, erl_child_setup, inet_gethost: the group the node was started in
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    # -- clients ------------------------------------------------------------------

    def backend_config(self, **overrides: Any) -> dict[str, Any]:
        """``get_pubsub`` keys for amqps to this node, trusting the test CA."""
        return {
            "pubsub_backend": "rabbitmq",
            "rabbitmq_host": "localhost",
            "rabbitmq_port": self.amqps_port,
            "rabbitmq_username": "guest",
            "rabbitmq_password": "guest",
            "rabbitmq_vhost": "/",
            "rabbitmq_tls": True,
            "rabbitmq_tls_ca_file": str(self.certs.ca),
            **overrides,
        }
