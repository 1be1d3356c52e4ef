"""MQTT reason codes, and the SDK errors (``trustgraph_pubsub.errors``) that paho's failures become.

Each message names the setting or broker configuration a person can act on.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from paho.mqtt.reasoncodes import ReasonCode

from ...errors import AuthenticationError, BrokerConnectionError, PubSubError, UnsupportedError

if TYPE_CHECKING:
    from . import MQTTBackend

_AUTH_FAILURES = frozenset({0x86, 0x87, 0x8C})  # bad user/password, not authorized, bad auth method
_NO_MATCHING_SUBSCRIBERS = 0x10
_SESSION_TAKEN_OVER = 0x8E
_SHARED_NOT_SUPPORTED = 0x9E


def unreachable(backend: MQTTBackend, exc: BaseException) -> BrokerConnectionError:
    """The error for a TCP connect to the broker that failed with ``exc``."""
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
