"""Mosquitto for the MQTT tests: a private instance by default.

BROKERS.md says the machine's Mosquitto answers at ``MQTT_HOST``/``MQTT_PORT``
(127.0.0.1:1883).  That one runs with Debian's configuration: no
``set_tcp_nodelay`` (every QoS 1 round trip pays Nagle's 40-90 ms), at most
1,000 queued messages per session, and nobody may restart it.  So unless
``MQTT_HOST`` or ``MQTT_PORT`` is set, the fixture starts its own
``mosquitto -c <conf>`` on a free port, with the project's settings:

* ``set_tcp_nodelay true``; ``max_queued_messages 0`` (unlimited) so that a
  durable subscription never drops its backlog; ``max_inflight_messages 100``
  (the Receive Maximum a client gets when it asks for none);
* ``persistence true`` in a temporary directory, saved every second and on
  SIGTERM, so ``restart()`` (SIGTERM, then the same command) keeps sessions
  and queued q1 messages: conformance case 11 runs against it;
* a second listener that demands a password (``per_listener_settings``), so
  ``bad_credentials_config`` can prove that wrong credentials raise
  ``AuthenticationError`` without the secret in its message;
  ``credentials_config`` gives the right ones and ``set_password`` changes
  them on the running broker (SIGHUP), for a refusal after a reconnect.
  Without ``mosquitto_passwd`` there is no such listener, and
  ``no_credential_check`` says why.

With ``MQTT_HOST``/``MQTT_PORT`` set the fixture only reaches that broker:
it cannot restart it and declares no credential check.

Quirks of Mosquitto 2.0.11 (Debian 12), seen with raw paho, which the MQTT
backend works around (so none defeats a battery case):

* ``SHARED_SUBS_NOT_RESTORED``: ``$share/...`` subscriptions are not restored
  from the persistence file (plain ones are).  After a restart a durable
  subscription exists again only once a consumer resubscribes; messages
  published before that find no subscriber.  The backend republishes such
  messages for a grace period after reconnecting, and consumers resubscribe
  on every connect; a subscription with no consumer at all across a restart
  still loses what is published until a consumer comes back.
* ``CLEAN_START_NOT_PERSISTED``: an MQTT 5 session whose first CONNECT had
  clean start set is never written to the persistence file.  The backend
  connects with clean start unset even for fresh sessions.
* a taken-over client is disconnected without the "session taken over"
  reason code, so takeover looks like a network failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from . import Broker, BrokerUnavailable, free_port, port_open, refused_port, wait_for_port

TEST_USER = "tg-test"
SHARED_SUBS_NOT_RESTORED = "shared-subscriptions-not-restored-after-restart"
CLEAN_START_NOT_PERSISTED = "clean-start-sessions-not-persisted"


class MQTTBroker(Broker):
    name: ClassVar[str] = "mqtt"
    quirks: ClassVar[frozenset[str]] = frozenset({SHARED_SUBS_NOT_RESTORED, CLEAN_START_NOT_PERSISTED})
    can_restart: ClassVar[bool] = True
    restart_keeps_data: ClassVar[bool] = True

    def __init__(self) -> None:
        self.external = bool(os.environ.get("MQTT_HOST") or os.environ.get("MQTT_PORT"))
        self.host = os.environ.get("MQTT_HOST") or "127.0.0.1"
        self.port = int(os.environ.get("MQTT_PORT") or 0)
        self.auth_port: int | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._password: str | None = None
        self._passwd_tool: str | None = None
        #: why the credential tests cannot run (None: they can).
        self.no_credential_check: str | None = None
        if self.external:
            self.can_restart = False  # type: ignore[misc]
            self.no_credential_check = (
                "the mqtt fixture reaches an external broker (MQTT_HOST/MQTT_PORT) whose "
                "credentials it does not manage"
            )

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self.external:
            port = self.port or 1883
            self.port = port
            if not port_open(self.host, port, timeout=2.0):
                raise BrokerUnavailable(
                    f"no MQTT broker answers at {self.host}:{port} (MQTT_HOST/MQTT_PORT); start it "
                    "with `mosquitto -d -c /etc/mosquitto/mosquitto.conf`, or unset MQTT_HOST and "
                    "MQTT_PORT to let the tests start a private mosquitto"
                )
            return
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.access(binary, os.X_OK):
            raise BrokerUnavailable(
                "mosquitto is not installed (apt-get install mosquitto), or point MQTT_HOST/MQTT_PORT "
                "at a running MQTT 5 broker"
            )
        self._binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="tg-mosquitto-"))
        self.port = free_port()
        self.auth_port = free_port()
        passwd = self._dir / "passwd"
        tool = shutil.which("mosquitto_passwd")
        if tool:
            self._passwd_tool = tool
            self._password = secrets.token_hex(12)
            subprocess.run(
                [tool, "-b", "-c", str(passwd), TEST_USER, self._password],
                check=True, capture_output=True, timeout=30,
            )
        else:
            self.auth_port = None
            self.no_credential_check = (
                "mosquitto_passwd is not on PATH (it ships with the mosquitto package), so the "
                "private mosquitto has no password listener to refuse credentials"
            )
        (self._dir / "mosquitto.conf").write_text(self._config(passwd if tool else None))
        self._spawn()
        if not wait_for_port(self.host, self.port, 30):
            log = self._log_tail()
            self.stop()
            raise BrokerUnavailable(f"private mosquitto did not open port {self.port}: {log}")

    def _config(self, passwd: Path | None) -> str:
        assert self._dir is not None
        lines = [
            *(["per_listener_settings true"] if passwd is not None else []),
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
        ]
        if passwd is not None:
            lines += [
                f"listener {self.auth_port} 127.0.0.1",
                "allow_anonymous false",
                f"password_file {passwd}",
            ]
        lines += [
            "persistence true",
            f"persistence_location {self._dir}/",
            "autosave_interval 1",
            "set_tcp_nodelay true",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 100",
            f"log_dest file {self._dir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            # As root mosquitto would switch to user "mosquitto", who cannot write the temp dir.
            lines.append("user root")
        return "\n".join(lines) + "\n"

    def _spawn(self) -> None:
        assert self._dir is not None
        self._proc = subprocess.Popen(
            [self._binary, "-c", str(self._dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _log_tail(self) -> str:
        if self._dir is None:
            return ""
        try:
            return (self._dir / "mosquitto.log").read_text()[-2000:]
        except OSError:
            return ""

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        if self.external:
            return
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def restart(self, kill: bool = False) -> None:
        """SIGTERM (mosquitto saves its database) or SIGKILL (what the last autosave
        kept), then start it again on the same port."""
        if not self.can_restart:
            raise NotImplementedError("the mqtt fixture cannot restart a broker it did not start")
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                while proc.poll() is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        self._spawn()
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(port_open, self.host, self.port, 0.5):
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not come back on port {self.port}: {self._log_tail()}")
            await asyncio.sleep(0.05)

    # -- configurations ---------------------------------------------------------

    def backend_config(self) -> dict[str, Any]:
        return {"mqtt_host": self.host, "mqtt_port": self.port}

    def refused_config(self) -> dict[str, Any]:
        return {"mqtt_host": "127.0.0.1", "mqtt_port": refused_port()}

    def bad_credentials_config(self) -> dict[str, Any] | None:
        if self.external or self.auth_port is None:
            return None
        return {
            "mqtt_host": self.host,
            "mqtt_port": self.auth_port,
            "mqtt_username": TEST_USER,
            "mqtt_password": "wrong-" + secrets.token_hex(8),
        }

    def credentials_config(self) -> dict[str, Any] | None:
        """The password listener with the right credentials (None: see ``no_credential_check``)."""
        if self.external or self.auth_port is None or self._password is None:
            return None
        return {
            "mqtt_host": self.host,
            "mqtt_port": self.auth_port,
            "mqtt_username": TEST_USER,
            "mqtt_password": self._password,
        }

    def set_password(self, password: str) -> None:
        """Change ``TEST_USER``'s password on the running broker (SIGHUP reloads the file).

        Blocking; run it with ``asyncio.to_thread``.  The reload is asynchronous:
        callers wait until a connection shows it took effect.
        """
        if self._passwd_tool is None or self._dir is None or self._proc is None:
            raise NotImplementedError(self.no_credential_check or "no password listener")
        subprocess.run(
            [self._passwd_tool, "-b", str(self._dir / "passwd"), TEST_USER, password],
            check=True, capture_output=True, timeout=30,
        )
        self._password = password
        self._proc.send_signal(signal.SIGHUP)
