"""Settings of the RabbitMQ backend: timeouts and limits, the validation of
the backend's settings and of a consumer's options, and pika's connection
parameters.

Nothing here talks to the broker.  Every knob is read by the module that uses
it (``from .config import ...``), so a test that changes one patches that
module.  Nothing secret is ever shown: a refused setting is shown through
``trustgraph_pubsub.redact.shown``, and the password goes to pika only as
``PlainCredentials`` (there is no ``amqp://`` URL to redact).  TLS (amqps)
settings are checked, and their files loaded, by ``trustgraph_pubsub.tls``,
the one place every backend builds its ``SSLContext``.
"""

from __future__ import annotations

import ssl
from typing import Any

import pika

from ...errors import ConfigurationError, UnsupportedError
from ...redact import shown
from ...tls import client_context, tls_flag

#: Seconds to open a connection before a refused/unreachable broker is reported.
CONNECT_TIMEOUT = 10.0
#: Seconds any broker round trip (declare, delete, channel open ...) may take.
RPC_TIMEOUT = 30.0
#: How long ``flush`` or a q2 ``send`` waits for publisher confirms.
CONFIRM_TIMEOUT = 60.0
#: RabbitMQ 3.x's default ``max_message_size``: 128 MiB.
MAX_MESSAGE_SIZE = 128 * 1024 * 1024
#: ``basic.qos`` prefetch when the caller does not pass ``prefetch``.
DEFAULT_PREFETCH = 100
#: Unconfirmed q1 messages per producer before ``send`` waits for confirms.
MAX_IN_FLIGHT = 4096
#: A send/receive that completes without waiting yields to the loop this often.
_YIELD_EVERY = 64

_TRANSIENT = 1
_PERSISTENT = 2
_CONSUMER_TYPES = ("shared",)
_POSITIONS = ("earliest", "latest")
_QUEUE_TYPES = ("quorum", "classic")


def _check_settings(
    host: str,
    port: int,
    username: str,
    password: str,
    queue_type: str,
    returns_per_redelivery: int,
    heartbeat: int,
) -> None:
    """Refuse a backend setting that cannot work, naming its flag."""
    if not isinstance(host, str) or not host or "/" in host:
        raise ConfigurationError(
            f"--rabbitmq-host must be a host name or address, got {shown(host)}"
        )
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"--rabbitmq-port must be 1-65535, got {shown(port)}")
    if not isinstance(username, str) or not username:
        raise ConfigurationError("--rabbitmq-username must not be empty")
    if not isinstance(password, str):
        raise ConfigurationError("--rabbitmq-password must be a string")
    if queue_type not in _QUEUE_TYPES:
        raise ConfigurationError(
            f"--rabbitmq-queue-type must be one of {', '.join(_QUEUE_TYPES)}, got {shown(queue_type)}"
        )
    if not isinstance(returns_per_redelivery, int) or returns_per_redelivery < 1:
        raise ConfigurationError(
            "--rabbitmq-returns-per-redelivery must be an int >= 1, "
            f"got {shown(returns_per_redelivery)}"
        )
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or not 0 <= heartbeat <= 65535:
        raise ConfigurationError(
            f"--rabbitmq-heartbeat must be 0-65535 seconds, got {shown(heartbeat)}"
        )


def _tls_context(
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    verify_hostname: bool,
) -> ssl.SSLContext | None:
    """The client ``SSLContext`` for amqps (None when ``tls`` is off), its files
    loaded now so that a bad one is refused by ``get_pubsub``, naming its flag."""
    for value, flag in ((tls, "--rabbitmq-tls"), (verify_hostname, "--rabbitmq-tls-verify-hostname")):
        if not isinstance(value, bool):
            raise ConfigurationError(f"{flag} must be true or false, got {shown(value)}")
    files = (("ca-file", ca_file), ("cert-file", cert_file), ("key-file", key_file))
    for name, path in files:
        if path is not None and not isinstance(path, str):
            raise ConfigurationError(
                f"{tls_flag('rabbitmq', name)} must be a file path, got {shown(path)}"
            )
    if not tls:
        given = [tls_flag("rabbitmq", name) for name, path in files if path]
        if given:
            raise ConfigurationError(
                f"{', '.join(given)} given but TLS is off: add --rabbitmq-tls "
                "(RABBITMQ_TLS=true) and the broker's amqps port (usually --rabbitmq-port 5671)"
            )
        return None
    return client_context(ca_file, cert_file, key_file, verify_hostname, "rabbitmq")


def _check_consumer_options(
    topic: str, initial_position: str, consumer_type: str, prefetch: Any
) -> int:
    """Refuse a consumer option that cannot work; the ``basic.qos`` prefetch to use."""
    if initial_position not in _POSITIONS:
        raise ConfigurationError(
            f"consumer on {topic}: initial_position must be 'earliest' or 'latest', "
            f"got {shown(initial_position)}"
        )
    if consumer_type not in _CONSUMER_TYPES:
        if consumer_type in ("exclusive", "failover"):
            raise UnsupportedError(
                f"consumer on {topic}: the RabbitMQ backend has no {consumer_type} consumers "
                f"(Capabilities.consumer_types is {sorted(_CONSUMER_TYPES)}: quorum queues "
                "ignore exclusive consumers); use 'shared' with one consumer"
            )
        raise ConfigurationError(
            f"consumer on {topic}: consumer_type must be one of {sorted(_CONSUMER_TYPES)}, "
            f"got {shown(consumer_type)}"
        )
    if prefetch is None:
        prefetch = DEFAULT_PREFETCH
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or not 0 < prefetch < 65536:
        raise ConfigurationError(
            f"consumer on {topic}: prefetch must be an int from 1 to 65535, got {shown(prefetch)}"
        )
    return prefetch


def _connection_parameters(
    host: str,
    port: int,
    vhost: str,
    username: str,
    password: str,
    heartbeat: int,
    connection_name: str,
    tls: ssl.SSLContext | None = None,
) -> pika.ConnectionParameters:
    """pika's parameters for one connection attempt (one try, no retry: the
    backend reconnects on the next call); amqps when ``tls`` is a context,
    which checks the certificate against ``host`` (and sends it as SNI)."""
    return pika.ConnectionParameters(
        ssl_options=None if tls is None else pika.SSLOptions(tls, server_hostname=host),
        host=host,
        port=port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(username, password),
        connection_attempts=1,
        retry_delay=0,
        heartbeat=heartbeat,
        socket_timeout=CONNECT_TIMEOUT,
        stack_timeout=CONNECT_TIMEOUT,
        client_properties={"connection_name": connection_name},
    )
