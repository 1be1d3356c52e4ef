"""MQTT reason codes, and the SDK errors (``trustgraph_pubsub.errors``) that paho's failures become.

Each message names the setting or broker configuration a person can act on.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

from paho.mqtt.reasoncodes import ReasonCode

from ...errors import AuthenticationError, BrokerConnectionError, PubSubError, UnsupportedError
from ...tls import certificate_failure

if TYPE_CHECKING:
    from . import MQTTBackend

_AUTH_FAILURES = frozenset({0x86, 0x87, 0x8C})  # bad user/password, not authorized, bad auth method
_NO_MATCHING_SUBSCRIBERS = 0x10
_SESSION_TAKEN_OVER = 0x8E
_SHARED_NOT_SUPPORTED = 0x9E


_TLS_PORT_HINT = "MQTT over TLS usually listens on 8883: --mqtt-port 8883 with --mqtt-tls"


def unreachable(backend: MQTTBackend, exc: BaseException) -> BrokerConnectionError:
    """The error for a TCP connect (or TLS handshake) to the broker that failed with ``exc``."""
    failed = certificate_failure(exc)
    if failed is not None:
        return BrokerConnectionError(
            f"cannot connect to the MQTT broker at {backend.where} over TLS: the broker's "
            f"certificate failed verification ({failed}); check that --mqtt-tls-ca-file "
            "(MQTT_TLS_CA_FILE) holds the authority that signed it, or the system's authorities "
            "trust it, and that --mqtt-host is a name the certificate covers "
            "(--mqtt-tls-verify-hostname)"
        )
    if backend.tls and isinstance(exc, (ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        return BrokerConnectionError(
            f"cannot connect to the MQTT broker at {backend.where} over TLS: the TLS handshake "
            f"failed ({type(exc).__name__}: {exc}); is --mqtt-port a TLS listener? "
            f"({_TLS_PORT_HINT})"
        )
    if isinstance(exc, ConnectionRefusedError):
        what = "connection refused"
    elif isinstance(exc, socket.gaierror):
        what = f"cannot resolve host {backend.host!r}"
    elif isinstance(exc, TimeoutError):
        what = f"no answer within {backend.connect_timeout}s"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return BrokerConnectionError(
        f"cannot reach the MQTT broker at {backend.where} ({what}); check --mqtt-host and "
        "--mqtt-port (MQTT_HOST, MQTT_PORT) and that the broker is running "
        "(mosquitto -d -c /etc/mosquitto/mosquitto.conf)"
    )


def connect_failed(backend: MQTTBackend, what: str, tls_error: ssl.SSLError | None) -> BrokerConnectionError:
    """The error for a connection the broker ended before its CONNACK (``what`` says how)."""
    if tls_error is not None:
        # TLS 1.3: the broker checks the client's certificate after the client's
        # side of the handshake is done; its refusal is an alert read afterwards.
        return BrokerConnectionError(
            f"{what}; TLS: {tls_error.reason or tls_error} (does the broker require a client "
            "certificate it trusts? --mqtt-tls-cert-file, --mqtt-tls-key-file)"
        )
    if not backend.tls:
        what += f" (if that port speaks TLS, add --mqtt-tls; {_TLS_PORT_HINT})"
    elif backend.tls_cert_file is None:
        # The alert may be lost: a broker that closes with our CONNECT unread resets the link.
        what += (" (over TLS: if the broker requires a client certificate, give "
                 "--mqtt-tls-cert-file and --mqtt-tls-key-file)")
    return BrokerConnectionError(what)


def refused(backend: MQTTBackend, reason: ReasonCode) -> PubSubError:
    """The error for a CONNACK that refused the connection with ``reason``."""
    if reason.value in _AUTH_FAILURES:
        user = "anonymous" if backend.username is None else f"user {backend.username!r}"
        return AuthenticationError(
            f"the MQTT broker at {backend.where} refused the credentials ({user}): {reason}; "
            "check --mqtt-username and --mqtt-password (MQTT_USERNAME, MQTT_PASSWORD)"
        )
    return BrokerConnectionError(
        f"the MQTT broker at {backend.where} refused the connection: {reason}"
    )


def subscribe_refused(backend: MQTTBackend, topic_filter: str, reason: ReasonCode) -> PubSubError:
    """The error for a SUBACK that refused ``topic_filter`` with ``reason``."""
    if reason.value == _SHARED_NOT_SUPPORTED:
        return UnsupportedError(
            f"the MQTT broker at {backend.where} does not support shared subscriptions "
            f"({topic_filter}); the MQTT backend needs an MQTT 5 broker that does"
        )
    if reason.value in _AUTH_FAILURES:
        return AuthenticationError(
            f"the MQTT broker at {backend.where} does not let this user subscribe to "
            f"{topic_filter}: {reason}; check the broker's ACL"
        )
    return BrokerConnectionError(
        f"the MQTT broker at {backend.where} refused the subscription {topic_filter}: {reason}"
    )
