"""Kafka settings: the tuning constants and the validation of the backend's options.

``check_settings`` is what ``KafkaBackend`` runs on its constructor's
arguments before keeping them; it does no I/O.  Kafka addresses carry no
secrets (one with a ``user@`` part is refused, the SASL credentials have
flags of their own), so nothing needs redacting in them; values shown in
error messages go through ``redact.shown``.
"""

from __future__ import annotations

from ...errors import ConfigurationError
from ...redact import shown

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: the protocols that speak TLS (``--kafka-tls-*`` apply to these only).
TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Kafka refuses topic names longer than this.
MAX_TOPIC_LENGTH = 249
#: room for the record batch and header overhead above the payload limit.
_OVERHEAD = 64 * 1024
CLIENT_ID = "trustgraph-pubsub"

#: background commit cadence: whichever comes first.
COMMIT_INTERVAL = 0.5
COMMIT_EVERY = 1000
#: group membership: a member that stops heartbeating is dropped after the
#: session timeout (``--kafka-session-timeout-ms``, this by default);
#: heartbeats are frequent so that a rebalance (a consumer joining) is noticed
#: within half a second by the other members.  6 s is the shortest a Kafka
#: broker takes by default (``group.min.session.timeout.ms``; a broker set
#: higher refuses the join, and the flag must follow it); it also bounds how
#: long a join is held: tansu holds a JoinGroup for half the session timeout
#: (measured: 5.0 s at 10 s, 3.0 s at 6 s, 1.0 s at 1 s), and every consumer
#: of a subscription joins when it starts.
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_INTERVAL_MS = 500
#: the shortest session timeout taken: three heartbeats, so that one late
#: heartbeat does not drop a member.
MIN_SESSION_TIMEOUT_MS = 3 * HEARTBEAT_INTERVAL_MS
#: milliseconds a consumer's request timeout keeps above the longest a broker may
#: rightly hold a request: a fetch (``fetch_max_wait_ms``) and, in a group, a
#: JoinGroup (the rebalance timeout, which is the session timeout here).
ANSWER_MARGIN_MS = 5_000
#: how long a revoked partition waits for in-flight messages to be acked
#: before its prefix is committed (fewer duplicates after a rebalance).
REVOKE_GRACE = 1.0
#: records taken from aiokafka's fetch buffer per call.
FETCH_BATCH = 500
#: bytes per partition batch a producer fills before a send waits for it to be
#: sent (aiokafka's default is 16 KiB, about 15 messages of 1 KiB; a send that
#: finds the batch full waits in ``asyncio.wait``).  Measured on tansu, 20,000
#: messages of 1 KiB: 28-36k msg/s at 16 KiB, 45-53k at 64 KiB, 55-58k at
#: 128 KiB, 55-56k at 256 KiB, 33-49k at 512 KiB and 3.5k at 1 MiB.  Lowered
#: to ``--kafka-max-message-size`` when that is smaller.
BATCH_BYTES = 128 * 1024
#: producer futures kept before finished ones are swept.
_SWEEP_AT = 4096
#: sends that did not wait before one yields to the event loop: aiokafka's
#: ``send`` suspends only when a partition's batch is full (``BATCH_BYTES``,
#: thousands of small messages), and until then no other task runs.
_YIELD_EVERY = 64


def consumer_request_timeout_ms(request_timeout_ms: int, fetch_max_wait_ms: int, *,
                                group: bool, session_timeout_ms: int = SESSION_TIMEOUT_MS) -> int:
    """The request timeout of a consumer client: ``--kafka-request-timeout-ms``, but
    never so short that a fetch or a group join the broker rightly holds times out.

    A request that times out closes its connection (aiokafka), so this is also how
    soon a consumer gives up on a stalled link; left at aiokafka's 40 s default it
    ignored the option.
    """
    floor = fetch_max_wait_ms + ANSWER_MARGIN_MS
    if group:
        floor = max(floor, session_timeout_ms + ANSWER_MARGIN_MS)
    return max(request_timeout_ms, floor)


def check_settings(
    bootstrap_servers: str,
    security_protocol: str,
    sasl_mechanism: str | None,
    sasl_username: str | None,
    sasl_password: str | None,
    *,
    fetch_max_wait_ms: int,
    partitions: int,
    replication_factor: int,
    retention_ms: int | None,
    max_message_size: int,
    connect_timeout: float,
    join_timeout: float,
    request_timeout_ms: int,
    session_timeout_ms: int = SESSION_TIMEOUT_MS,
    tls_files: dict[str, str | None] | None = None,
) -> tuple[list[str], str, str]:
    """Check the backend's settings; the bootstrap hosts, the security protocol
    and the SASL mechanism, normalised.  Raises ``ConfigurationError`` naming
    the flag at fault."""
    if not isinstance(bootstrap_servers, str) or not bootstrap_servers.strip():
        raise ConfigurationError(
            "--kafka-bootstrap-servers must be host:port[,host:port...], got "
            f"{shown(bootstrap_servers)}"
        )
    hosts = [h.strip() for h in bootstrap_servers.split(",")]
    for h in hosts:
        if "@" in h:
            raise ConfigurationError(
                f"--kafka-bootstrap-servers {shown(bootstrap_servers)}: addresses carry no "
                "user or password; use --kafka-sasl-username and --kafka-sasl-password"
            )
        host, sep, port = h.rpartition(":")
        if not h or (sep and (not host or not port.isdigit())):
            raise ConfigurationError(
                f"--kafka-bootstrap-servers: {shown(h)} is not host:port "
                f"(in {shown(bootstrap_servers)})"
            )
    protocol = (security_protocol or "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigurationError(
            f"--kafka-security-protocol {shown(security_protocol)}: expected one of "
            f"{', '.join(SECURITY_PROTOCOLS)}"
        )
    for name, path in (tls_files or {}).items():
        if path and protocol not in TLS_PROTOCOLS:
            flag = f"--kafka-tls-{name.replace('_', '-')}"
            raise ConfigurationError(
                f"{flag} {shown(path)} is for TLS, which is off: --kafka-security-protocol is "
                f"{protocol}; use SSL (or SASL_SSL) to connect over TLS, or drop {flag}"
            )
    mechanism = (sasl_mechanism or "PLAIN").upper()
    if protocol.startswith("SASL"):
        if mechanism not in SASL_MECHANISMS:
            raise ConfigurationError(
                f"--kafka-sasl-mechanism {shown(sasl_mechanism)}: expected one of "
                f"{', '.join(SASL_MECHANISMS)}"
            )
        if not sasl_username or sasl_password is None:
            raise ConfigurationError(
                f"--kafka-security-protocol {protocol} needs --kafka-sasl-username and "
                "--kafka-sasl-password"
            )
    for flag, value, low in (
        ("--kafka-fetch-max-wait-ms", fetch_max_wait_ms, 1),
        ("--kafka-partitions", partitions, 1),
        ("--kafka-replication-factor", replication_factor, 1),
        ("--kafka-max-message-size", max_message_size, 1),
        ("--kafka-request-timeout-ms", request_timeout_ms, 1),
        ("--kafka-session-timeout-ms", session_timeout_ms, MIN_SESSION_TIMEOUT_MS),
    ):
        if not isinstance(value, int) or value < low:
            raise ConfigurationError(f"{flag} must be an integer >= {low}, got {shown(value)}")
    if retention_ms is not None and (not isinstance(retention_ms, int) or retention_ms < -1):
        raise ConfigurationError(
            f"--kafka-retention-ms must be -1 (forever) or a positive integer, got {shown(retention_ms)}"
        )
    for flag, t in (("--kafka-connect-timeout", connect_timeout),
                    ("--kafka-join-timeout", join_timeout)):
        if not isinstance(t, (int, float)) or t <= 0:
            raise ConfigurationError(f"{flag} must be a positive number of seconds, got {shown(t)}")

    return hosts, protocol, mechanism
