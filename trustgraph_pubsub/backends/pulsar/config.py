"""The Pulsar backend's settings: tuning knobs, consumer-type and position tables,
checks of the options it is given, and how its URLs are shown (secrets redacted)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import pulsar

from ... import naming
from ...errors import ConfigurationError
from ...redact import redact_url, shown

#: bytes kept back from ``maxMessageSize``: the C++ client reserves 10 KiB for message
#: metadata, and a batch adds per-message framing on top (6 KiB is ample for it).
METADATA_RESERVE = 16 * 1024
#: messages / bytes a pipelined producer may have in flight before ``send`` awaits a flush.
WINDOW = 10_000
WINDOW_BYTES = 32 * 1024 * 1024
#: seconds from the first unconfirmed pipelined send to the background flush that watches
#: it (``PulsarProducer._watch``): well under the client's 100 ms reconnect backoff, and
#: long enough that it rarely cuts a batch short.
WATCH_DELAY = 0.05
#: the client's default batch size, lowered to the broker's limit when that is smaller.
BATCH_BYTES = 128 * 1024
#: seconds for the client's grouped acks (sent every 100 ms) to reach the broker.
ACK_FLUSH = 0.2
#: calls answered without waiting before one yields to the event loop (inlined counters:
#: a coroutine per call would cost more than the call).
_YIELD_EVERY = 64

#: seconds a producer stays out of the client after a batched probe was answered
_RELEASE_PAUSE = 0.005

_CONSUMER_TYPES: dict[str, Any] = {
    "shared": pulsar.ConsumerType.Shared,
    "exclusive": pulsar.ConsumerType.Exclusive,
    "failover": pulsar.ConsumerType.Failover,
}
_POSITIONS: dict[str, Any] = {
    "earliest": pulsar.InitialPosition.Earliest,
    "latest": pulsar.InitialPosition.Latest,
}

_redact = redact_url


def _check_service_url(url: str) -> None:
    """Refuse a service URL the Pulsar client would choke on later, and say why.

    Pulsar takes ``pulsar://host:port[,host:port...]``; it has no place for a
    ``user:password@`` (credentials go in ``--pulsar-api-key``), so a URL with
    one is refused, and never quoted with the password in it.
    """
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if "@" in authority:
        raise ConfigurationError(
            f"--pulsar-host {shown(url)}: Pulsar service URLs carry no user or password; "
            "give a token with --pulsar-api-key (env PULSAR_API_KEY)"
        )
    for part in authority.split(","):
        name, sep, port = part.rpartition(":")
        if not sep:
            name, port = part, "6650"
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"--pulsar-host {shown(url)}: {shown(part)} is not host:port"
            )


def _check_settings(
    host: str,
    admin_url: str | None,
    nack_delay_ms: int,
    operation_timeout: int,
    send_timeout_ms: int,
    max_message_size: int,
) -> None:
    """Refuse ``PulsarBackend``'s options that are not what it needs, and say why."""
    if not isinstance(host, str) or not host.startswith(("pulsar://", "pulsar+ssl://")):
        raise ConfigurationError(
            f"--pulsar-host {shown(str(host))} is not a Pulsar service URL "
            "(expected pulsar://host:6650 or pulsar+ssl://host:6651)"
        )
    _check_service_url(host)
    if admin_url is not None and not admin_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"--pulsar-admin-url {shown(admin_url)} is not an HTTP URL "
            "(expected http://host:8080)"
        )
    for flag, value, low in (
        ("--pulsar-nack-delay-ms", nack_delay_ms, 0),
        ("--pulsar-operation-timeout", operation_timeout, 1),
        ("--pulsar-send-timeout-ms", send_timeout_ms, 0),
        ("--pulsar-max-message-size", max_message_size, METADATA_RESERVE + 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ConfigurationError(f"{flag} must be an integer >= {low}, got {shown(value)}")


@dataclass(frozen=True)
class TlsSettings:
    """The ``--pulsar-tls-*`` options; TLS itself is on with a ``pulsar+ssl://`` URL."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_hostname: bool = True

    def files(self) -> dict[str, str | None]:
        return {"ca-file": self.ca_file, "cert-file": self.cert_file, "key-file": self.key_file}

    def client_kwargs(self) -> dict[str, Any]:
        """``pulsar.Client`` arguments for TLS (the C++ client takes file paths).

        With no CA file the system's bundle is trusted (OpenSSL's default file,
        ``SSL_CERT_FILE`` honoured), as a ``ssl`` context would; the Python client
        would otherwise fall back to ``certifi``'s.  A client certificate goes in
        ``AuthenticationTLS``, which presents it in the handshake and authenticates
        as its role.
        """
        trust = self.ca_file or ssl.get_default_verify_paths().cafile
        kwargs: dict[str, Any] = {
            "tls_validate_hostname": self.verify_hostname,
            "tls_allow_insecure_connection": False,
        }
        if trust:
            kwargs["tls_trust_certs_file_path"] = trust
        if self.cert_file and self.key_file:
            kwargs["authentication"] = pulsar.AuthenticationTLS(self.cert_file, self.key_file)
        return kwargs


def _check_tls(host: str, tls: TlsSettings, api_key_given: bool) -> None:
    """Refuse ``--pulsar-tls-*`` files without a ``pulsar+ssl://`` URL, and a client
    certificate beside a token (both would authenticate)."""
    for name, path in tls.files().items():
        if path and not host.startswith("pulsar+ssl://"):
            raise ConfigurationError(
                f"--pulsar-tls-{name} {shown(path)} is for TLS, which is off: --pulsar-host "
                f"{shown(host)} is not a pulsar+ssl:// URL (TLS: pulsar+ssl://host:6651)"
            )
    if tls.cert_file and api_key_given:
        raise ConfigurationError(
            "--pulsar-tls-cert-file and --pulsar-api-key both authenticate (a client "
            "certificate as its own role, by Pulsar TLS authentication); give one of them"
        )


def _qos(topic: str) -> str:
    """The qos a topic is used with: a Pulsar URI's scheme says q0 or q1."""
    if "://" in topic:
        return "q0" if topic.startswith("non-persistent://") else "q1"
    return naming.parse(topic).qos

