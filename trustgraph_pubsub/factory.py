"""Pick a backend at run time: ``get_pubsub(**config)`` and ``add_pubsub_args``.

One table (``BACKEND_OPTIONS``) drives both the command line and
``get_pubsub``: each option has a flag ``--<backend>-<name>``, an environment
fallback and a default.  Precedence is explicit argument > environment >
default, so a service started with no flags still honours ``PULSAR_HOST``.

Backends are found in a registry: the four built in (plus ``memory``) by
dotted path, and third-party ones through the entry-point group
``trustgraph_pubsub.backends`` (the entry point names the backend class; a
class attribute ``options: tuple[Option, ...]`` declares its flags).  Nothing
here imports a broker library: backend modules import theirs lazily.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .backend import PubSubBackend
from .errors import ConfigurationError
from .redact import shown

ENTRY_POINT_GROUP = "trustgraph_pubsub.backends"
DEFAULT_BACKEND = "pulsar"


@dataclass(frozen=True)
class Option:
    """One backend option: ``--<backend>-<name>`` / ``env`` / ``default``."""

    name: str
    env: str | None = None
    default: Any = None
    type: type = str
    help: str = ""
    secret: bool = False


def tls_options(env_prefix: str, turned_on_by: str, client_cert: str = "") -> tuple[Option, ...]:
    """The TLS options every backend shares: trusted authorities, a client certificate
    and its key (mutual TLS), the name check; ``env_prefix`` names their environment
    variables (``<PREFIX>_TLS_CA_FILE``...), ``turned_on_by`` what turns TLS on."""
    mutual = f"client certificate (PEM) for mutual TLS{'; ' + client_cert if client_cert else ''}"
    return (
        Option("tls_ca_file", f"{env_prefix}_TLS_CA_FILE", None,
               help=f"PEM file of the authorities to trust (TLS is on with {turned_on_by}; "
               "default: the system's)"),
        Option("tls_cert_file", f"{env_prefix}_TLS_CERT_FILE", None, help=mutual),
        Option("tls_key_file", f"{env_prefix}_TLS_KEY_FILE", None,
               help="the client certificate's private key (PEM)"),
        Option("tls_verify_hostname", f"{env_prefix}_TLS_VERIFY_HOSTNAME", True, bool,
               help="check the broker's name against its certificate"),
    )


BACKEND_OPTIONS: dict[str, tuple[Option, ...]] = {
    "pulsar": (
        Option("host", "PULSAR_HOST", "pulsar://localhost:6650", help="Pulsar service URL"),
        Option("api_key", "PULSAR_API_KEY", None, help="Pulsar token (JWT)", secret=True),
        Option("listener", "PULSAR_LISTENER", None, help="Pulsar advertised listener name"),
        Option("admin_url", "PULSAR_ADMIN_URL", None,
               help="Pulsar admin REST URL; enables explicit queue lifecycle"),
        Option("nack_delay_ms", "PULSAR_NACK_DELAY_MS", 1000, int,
               help="delay before a negatively acknowledged message is redelivered"),
        Option("operation_timeout", "PULSAR_OPERATION_TIMEOUT", 10, int,
               help="seconds a lookup, create or admin call may take; a refused connection "
               "is reported after at most this"),
        Option("send_timeout_ms", "PULSAR_SEND_TIMEOUT_MS", 30000, int,
               help="how long the client keeps retrying an unconfirmed send (0: forever)"),
        Option("max_message_size", "PULSAR_MAX_MESSAGE_SIZE", 5 * 1024 * 1024, int,
               help="the broker's maxMessageSize in bytes (payloads get this less 16 KiB)"),
        *tls_options("PULSAR", "a pulsar+ssl:// --pulsar-host",
                     "Pulsar TLS authentication, instead of --pulsar-api-key"),
    ),
    "rabbitmq": (
        Option("host", "RABBITMQ_HOST", "localhost", help="RabbitMQ host"),
        Option("port", "RABBITMQ_PORT", 5672, int,
               help="RabbitMQ AMQP port (amqps listeners are usually on 5671: give it with "
               "--rabbitmq-tls)"),
        Option("username", "RABBITMQ_USERNAME", "guest", help="RabbitMQ user"),
        Option("password", "RABBITMQ_PASSWORD", "guest", help="RabbitMQ password", secret=True),
        Option("vhost", "RABBITMQ_VHOST", "/", help="RabbitMQ virtual host"),
        Option("queue_type", "RABBITMQ_QUEUE_TYPE", "quorum",
               help="queue type of durable (q1/q2) subscriptions: quorum (replicated) or "
               "classic (lower latency)"),
        Option("returns_per_redelivery", "RABBITMQ_RETURNS_PER_REDELIVERY", 10, int,
               help="quorum queues: unsettled returns (a consumer that crashed holding the "
               "message) that count as one redelivery toward the dead-letter limit"),
        Option("heartbeat", "RABBITMQ_HEARTBEAT", 30, int,
               help="AMQP heartbeat in seconds: a stalled connection is noticed within about "
               "twice this (0 turns heartbeats off)"),
        Option("tls", "RABBITMQ_TLS", False, bool,
               help="connect over TLS (amqps); the port stays --rabbitmq-port, so give the "
               "broker's TLS listener (usually 5671)"),
        *tls_options("RABBITMQ", "--rabbitmq-tls"),
    ),
    "mqtt": (
        Option("host", "MQTT_HOST", "localhost", help="MQTT broker host"),
        Option("port", "MQTT_PORT", 1883, int, help="MQTT broker port"),
        Option("username", "MQTT_USERNAME", None, help="MQTT user"),
        Option("password", "MQTT_PASSWORD", None, help="MQTT password", secret=True),
        Option("session_expiry", "MQTT_SESSION_EXPIRY", 7 * 24 * 3600, int,
               help="seconds a durable subscription's session, and the messages queued in it, "
               "outlives its last consumer"),
        Option("max_inflight", "MQTT_MAX_INFLIGHT", 100, int,
               help="QoS 1/2 publishes in flight per connection; beyond it send waits for a PUBACK"),
        Option("keepalive", "MQTT_KEEPALIVE", 30, int,
               help="seconds between MQTT keep-alive pings; a silent dead link is noticed in about 2x this"),
        Option("connect_timeout", "MQTT_CONNECT_TIMEOUT", 10.0, float,
               help="seconds to wait for the broker's CONNACK"),
        Option("tls", "MQTT_TLS", False, bool,
               help="connect over TLS; MQTT over TLS usually listens on 8883, so give "
               "--mqtt-port 8883 too"),
        *tls_options("MQTT", "--mqtt-tls"),
    ),
    "kafka": (
        Option("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092",
               help="Kafka bootstrap servers, comma separated"),
        Option("security_protocol", "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
               help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
        Option("sasl_mechanism", "KAFKA_SASL_MECHANISM", None,
               help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
        Option("sasl_username", "KAFKA_SASL_USERNAME", None, help="Kafka SASL user"),
        Option("sasl_password", "KAFKA_SASL_PASSWORD", None, help="Kafka SASL password",
               secret=True),
        Option("fetch_max_wait_ms", "KAFKA_FETCH_MAX_WAIT_MS", 5, int,
               help="longest a fetch waits for data; low keeps request/response fast"),
        Option("partitions", "KAFKA_PARTITIONS", 4, int,
               help="partitions of topics the backend creates (competing consumers <= this)"),
        Option("replication_factor", "KAFKA_REPLICATION_FACTOR", 1, int,
               help="replication factor of topics the backend creates"),
        Option("retention_ms", "KAFKA_RETENTION_MS", None, int,
               help="retention.ms of topics the backend creates (-1 forever; default broker's)"),
        Option("max_message_size", "KAFKA_MAX_MESSAGE_SIZE", 8 * 1024 * 1024, int,
               help="largest payload in bytes; sets the topic's max.message.bytes and client limits"),
        Option("connect_timeout", "KAFKA_CONNECT_TIMEOUT", 10.0, float,
               help="seconds to wait for the broker on connect and admin calls"),
        Option("join_timeout", "KAFKA_JOIN_TIMEOUT", 60.0, float,
               help="seconds create_consumer waits to join its group and get partitions"),
        Option("request_timeout_ms", "KAFKA_REQUEST_TIMEOUT_MS", 40000, int,
               help="how long a Kafka client waits for an answer before it drops the "
               "connection and reconnects (a stalled link is noticed by then); the producer "
               "fails what it had not confirmed (Producer sends it again); consumers wait at "
               "least 5 s past a fetch's wait, and group members past the session timeout"),
        Option("session_timeout_ms", "KAFKA_SESSION_TIMEOUT_MS", 6000, int,
               help="a group member not heard from within this is dropped and its partitions "
               "go to the others; the broker's group.min.session.timeout.ms (6000 by default) "
               "and group.max.session.timeout.ms bound it, so follow a broker set otherwise; "
               "at least 1500 (three 500 ms heartbeats)"),
        *tls_options("KAFKA", "--kafka-security-protocol SSL or SASL_SSL"),
    ),
    "memory": (),
}

_BUILTIN: dict[str, str] = {
    "pulsar": "trustgraph_pubsub.backends.pulsar:PulsarBackend",
    "rabbitmq": "trustgraph_pubsub.backends.rabbitmq:RabbitMQBackend",
    "mqtt": "trustgraph_pubsub.backends.mqtt:MQTTBackend",
    "kafka": "trustgraph_pubsub.backends.kafka:KafkaBackend",
    "memory": "trustgraph_pubsub.backends.memory:MemoryBackend",
}

_registered: dict[str, Any] = {}


def register_backend(name: str, cls: Any, options: tuple[Option, ...] = ()) -> None:
    """Register a backend class under ``name`` (for plugins and tests)."""
    _registered[name] = cls
    BACKEND_OPTIONS.setdefault(name, tuple(options) or tuple(getattr(cls, "options", ())))


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Every backend name that ``get_pubsub`` accepts."""
    return sorted(set(_BUILTIN) | set(_registered) | set(_plugins()))


def backend_class(name: str) -> Any:
    """Resolve a backend name to its class, importing it on demand."""
    if name in _registered:
        return _registered[name]
    if name in _BUILTIN:
        module, _, attr = _BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    plugins = _plugins()
    if name in plugins:
        cls = plugins[name].load()
        BACKEND_OPTIONS.setdefault(name, tuple(getattr(cls, "options", ())))
        return cls
    raise ConfigurationError(
        f"unknown pubsub backend {name!r}; known backends: {', '.join(available_backends())}"
    )


def _options_for(name: str) -> tuple[Option, ...]:
    return BACKEND_OPTIONS.get(name, ())


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _truth(value: Any) -> bool:
    """A bool option from a bool or a word (``true``/``false``, ``1``/``0``,
    ``yes``/``no``, ``on``/``off``); ``bool("false")`` would be True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("not true/false")


def _coerce(backend: str, opt: Option, value: Any) -> Any:
    """``value`` as the option's type, or a ``ConfigurationError`` naming the flag.

    Strings (flags, the environment) are parsed; a float given for an int
    option must be whole, and numbers must be finite, so ``inf`` or ``nan``
    never reach a client library as an ``OverflowError`` deep in its code.
    """
    flag = f"--{backend}-{opt.name.replace('_', '-')}"
    if value is None:
        return value
    try:
        if opt.type is bool:
            return _truth(value)
        if opt.type is int and isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        if isinstance(value, bool) and opt.type is not bool:
            raise TypeError("a bool is not a number")
        out = value if isinstance(value, opt.type) else opt.type(value)
        if isinstance(out, float) and not math.isfinite(out):
            raise ValueError("not a finite number")
        return out
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigurationError(
            f"option {flag} must be {opt.type.__name__}, got {shown(value, opt.secret)}"
        ) from exc


def resolve_options(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments for backend ``name``: config > env > default."""
    out: dict[str, Any] = {}
    for opt in _options_for(name):
        key = f"{name}_{opt.name}"
        value = config.get(key)
        if value is None and opt.env:
            value = os.environ.get(opt.env)
        if value is None:
            value = opt.default
        out[opt.name] = _coerce(name, opt, value)
    return out


def get_pubsub(**config: Any) -> PubSubBackend:
    """Build the backend named by ``pubsub_backend`` (env ``PUBSUB_BACKEND``, default pulsar).

    Takes the flat keys ``add_pubsub_args`` produces (``pulsar_host``,
    ``rabbitmq_password`` ...), so ``get_pubsub(**vars(args))`` works.  Keys
    of other backends are ignored.
    """
    name = config.get("pubsub_backend") or os.environ.get("PUBSUB_BACKEND") or DEFAULT_BACKEND
    if not isinstance(name, str):
        raise ConfigurationError(f"pubsub_backend must be a string, got {type(name).__name__}")
    cls = backend_class(name)
    backend: PubSubBackend = cls(**resolve_options(name, config))
    return backend


def add_pubsub_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--pubsub-backend`` and every backend's own flags to ``parser``.

    Flag defaults are None so that ``get_pubsub`` applies the environment and
    the table's defaults in one place.
    """
    parser.add_argument(
        "--pubsub-backend",
        default=None,
        help=f"message broker backend: {', '.join(available_backends())} "
        f"(env PUBSUB_BACKEND, default {DEFAULT_BACKEND})",
    )
    for backend in sorted(BACKEND_OPTIONS):
        for opt in BACKEND_OPTIONS[backend]:
            flag = f"--{backend}-{opt.name.replace('_', '-')}"
            default = "(hidden)" if opt.secret and opt.default is not None else opt.default
            env = f"env {opt.env}, " if opt.env else ""
            if opt.type is bool:  # ``--x-tls`` alone means true; ``--x-tls false`` too
                parser.add_argument(flag, dest=f"{backend}_{opt.name}", default=None, nargs="?",
                                    const=True, type=_truth,
                                    help=f"{opt.help} ({env}default {default})")
                continue
            parser.add_argument(
                flag,
                dest=f"{backend}_{opt.name}",
                default=None,
                type=opt.type,
                help=f"{opt.help} ({env}default {default})",
            )
