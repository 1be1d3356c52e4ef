"""The MQTT backend's constants and tuning knobs, and the checks of its settings and options.

The other modules import these knobs by name, so a test that changes one
patches the module that reads it (``consumer.HANDOVER_TIMEOUT``,
``producer.UNROUTED_GRACE``, ...), not the package.  The broker is named by
host and port alone (credentials are separate settings, never part of an
address), so ``MQTTBackend.where`` needs no redaction; bad values are shown
through ``redact.shown``.  ``tls_context`` checks the ``--mqtt-tls*`` settings
and builds their ``SSLContext`` (through the shared ``trustgraph_pubsub.tls``).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from ...backend import ConsumerType, InitialPosition
from ...errors import ConfigurationError, UnsupportedError
from ...redact import shown
from ...tls import client_context

#: user property carrying the redelivery count of a handed-back message.
REDELIVERY_PROPERTY = "tg-mqtt-redeliveries"
#: MQTT's largest packet is 268,435,455 bytes; keep 1 MiB for topic and properties.
MAX_PAYLOAD = 256 * 1024 * 1024 - 1024 * 1024
#: messages the broker may push ahead of acks when ``prefetch`` is not given.
DEFAULT_PREFETCH = 100
#: seconds after a reconnect in which "no matching subscribers" means "not yet" (see _Publisher).
UNROUTED_GRACE = 15.0
#: longest a closing consumer spends handing its messages back.
HANDOVER_TIMEOUT = 30.0
#: a slot whose connection was lost this many times within ``TAKEOVER_WINDOW`` s is
#: avoided that long: another process's consumer is probably taking it over (a
#: takeover the broker names, reason 0x8E, counts as ``TAKEOVER_LIMIT`` at once).
TAKEOVER_LIMIT = 3
TAKEOVER_WINDOW = 60.0
#: ``loop_misc`` cadence (keep-alive pings, ping timeouts).
_MISC_INTERVAL = 1.0
#: packets handled per readable event before yielding to the loop.
_READ_BATCH = 16
#: longest a DISCONNECT may take to be written before the socket is dropped.
_CLOSE_TIMEOUT = 5.0
#: bytes buffered for the socket above which sends wait (and below which they go on).
_WIRE_HIGH = 8 * 1024 * 1024
_WIRE_LOW = 1024 * 1024
#: bytes asked of the socket per read (paho's own reads are a few bytes each).
_RECV_CHUNK = 256 * 1024

_QOS = {"q0": 0, "q1": 1, "q2": 2}
_SESSION_EXPIRY_MAX = 0xFFFFFFFF


def check_settings(
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    session_expiry: int,
    max_inflight: int,
    keepalive: int,
    connect_timeout: float,
) -> None:
    """Raise ``ConfigurationError`` for a backend setting MQTT cannot use, named as its flag."""
    if not isinstance(host, str) or not host or any(c in host for c in "/@ "):
        raise ConfigurationError(
            f"--mqtt-host must be a host name or address (no URL; the port is --mqtt-port, "
            f"credentials --mqtt-username/--mqtt-password), got {shown(host)}"
        )
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"--mqtt-port must be 1-65535, got {shown(port)}")
    if not isinstance(session_expiry, int) or not 0 <= session_expiry <= _SESSION_EXPIRY_MAX:
        raise ConfigurationError(
            f"--mqtt-session-expiry must be 0-{_SESSION_EXPIRY_MAX} seconds, got {shown(session_expiry)}"
        )
    if not isinstance(max_inflight, int) or not 0 < max_inflight <= 65535:
        raise ConfigurationError(f"--mqtt-max-inflight must be 1-65535, got {shown(max_inflight)}")
    if not isinstance(keepalive, int) or not 0 <= keepalive <= 65535:
        raise ConfigurationError(f"--mqtt-keepalive must be 0-65535 seconds, got {shown(keepalive)}")
    if not isinstance(connect_timeout, (int, float)) or connect_timeout <= 0:
        raise ConfigurationError(
            f"--mqtt-connect-timeout must be a positive number of seconds, got {shown(connect_timeout)}"
        )
    if password is not None and username is None:
        raise ConfigurationError("--mqtt-password is set but --mqtt-username is not; set both")


_TLS_FILES = ("ca_file", "cert_file", "key_file")


def tls_context(
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    verify_hostname: bool,
) -> ssl.SSLContext | None:
    """The ``SSLContext`` of ``--mqtt-tls`` (None without it), its files checked and loaded.

    A file given while TLS is off would be silently unused: that is a
    ``ConfigurationError`` naming ``--mqtt-tls``.  Missing or unloadable files
    are ``trustgraph_pubsub.tls.client_context``'s errors, naming the flag.
    """
    for flag, on in (("--mqtt-tls", tls), ("--mqtt-tls-verify-hostname", verify_hostname)):
        if not isinstance(on, bool):
            raise ConfigurationError(f"{flag} must be true or false, got {shown(on)}")
    files = dict(zip(_TLS_FILES, (ca_file, cert_file, key_file), strict=True))
    for name, path in files.items():
        if path is not None and not isinstance(path, str):
            raise ConfigurationError(
                f"--mqtt-tls-{name.replace('_', '-')} must be a file path, got {shown(path)}"
            )
    given = [f"--mqtt-tls-{name.replace('_', '-')}" for name, path in files.items() if path]
    if not tls:
        if given:
            raise ConfigurationError(
                f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but --mqtt-tls "
                "is not (MQTT_TLS): the files are only used over TLS; add --mqtt-tls, usually "
                "with --mqtt-port 8883, or drop them"
            )
        return None
    return client_context(ca_file, cert_file, key_file, verify_hostname, "mqtt")


def check_consumer_options(
    topic: str,
    subscription: str,
    initial_position: InitialPosition,
    consumer_type: ConsumerType,
    opts: Mapping[str, Any],
) -> int:
    """Check ``create_consumer``'s options; the prefetch (MQTT Receive Maximum) to use."""
    if initial_position not in ("earliest", "latest"):
        raise ConfigurationError(
            f"consumer {subscription!r} on {topic}: initial_position must be 'earliest' or "
            f"'latest', got {shown(initial_position)}"
        )
    if consumer_type != "shared":
        raise UnsupportedError(
            f"consumer {subscription!r} on {topic}: the MQTT backend gives only 'shared' "
            f"subscriptions (MQTT shared subscriptions), not {shown(consumer_type)}"
        )
    prefetch = opts.get("prefetch", DEFAULT_PREFETCH)
    if prefetch is None:
        prefetch = DEFAULT_PREFETCH
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 < prefetch <= 65535:
        raise ConfigurationError(
            f"consumer {subscription!r} on {topic}: prefetch must be 1-65535 (MQTT Receive "
            f"Maximum), got {shown(prefetch)}"
        )
    return prefetch
