"""Apache Kafka backend, driven by aiokafka's asyncio clients.

Names come from ``naming``: topic ``tenant.namespace.queue``, and one
consumer group per subscription (``naming.kafka_group``).  The qos picks the
producer: q0 ``acks=0``, q1 ``acks=all``, q2 an idempotent producer with
``acks=all``.  aiokafka fixes ``acks`` per client, so a backend holds at most
one producer client per qos level, shared by every topic producer of that
level; each ``create_consumer`` gets its own consumer client (one group
member), kept for the consumer's whole life.

Acknowledgement.  Kafka only stores one committed offset per partition, so an
ack cannot be forwarded as such.  The consumer tracks, per partition, the
offsets it delivered and not yet acknowledged; the committable point is the
lowest of those (or, with nothing outstanding, the offset after the highest
delivered).  Acking 5 before 4 therefore never commits past 4.  Commits are
sent in the background, every ``COMMIT_INTERVAL`` seconds or after
``COMMIT_EVERY`` acks, never one broker round trip per ack; the acked prefix
is also committed when partitions are revoked in a rebalance and on close.
A nack seeks the partition back to the nacked offset (or to an earlier one
still waiting to come again); when the replay arrives, offsets that were
meanwhile acked or are still being handled are skipped, so only nacked
messages come again.

Redelivery counts are kept by the consumer per (partition, offset): Kafka
does not track them.  They are exact while a partition stays with one
consumer and start again from zero after a rebalance or a restart, which is
why ``Capabilities.redelivery_count`` is False; the dead-letter limit holds
for a stable group, and a message can take a few more attempts than the
limit if its partition moves in between.

Subscriptions.  ``create_consumer`` returns only once the consumer is in
its group, has its partitions and knows its positions.  Where the group has
no committed offset for a partition, the position found through
``initial_position`` (earliest / latest) is committed at once, so the
subscription keeps its place for whichever member owns the partition next;
a partition that appears later without a committed offset (added partitions,
a broker that lost its state) is read from the beginning, since everything in
it was written after the subscription existed.

Queue lifecycle goes through the admin client and checks every per-topic
error code the broker returns.  ``create_queue(topic, subscription)`` makes
the topic (``partitions``, ``replication_factor``, ``retention_ms``) and then
commits the group's offsets at the current end of each partition, so the
subscription exists and keeps every message published after it, like a
RabbitMQ queue.  ``queue_exists(topic, subscription)`` is true when the topic
exists and the group has committed offsets on it.  ``delete_queue(topic,
subscription)`` deletes the consumer group (refused while members are
connected); ``delete_queue(topic)`` deletes the topic and every group named
for a subscription on it.  Deleting what does not exist is not an error.

Ephemeral subscriptions (``create_consumer(..., ephemeral=True)``) have
one consumer by definition, so they use no consumer group at all: the
client assigns itself every partition the topic has when it is created and
starts each at ``initial_position``.  Acks are tracked as usual (a nack still
replays only what was nacked) but nothing is ever committed: positions live
in the client, and when it closes or its process dies nothing of the
subscription remains on the broker (``queue_exists`` is False for it at any
time).  No group also means no JoinGroup, which some brokers make take
seconds; a request/response caller makes one of these at every start.
Partitions added to the topic later are not read.

Consumer types: only ``shared``.  A group splits partitions between members,
so there is no way to make Kafka refuse a second consumer (``exclusive``) or
keep a hot standby for a whole topic (``failover``).

TLS is on with ``security_protocol`` SSL or SASL_SSL (``tls_*`` files with
PLAINTEXT or SASL_PLAINTEXT are refused).  One ``ssl.SSLContext`` from
``tls.client_context`` goes to every aiokafka client (admin, producers,
consumers, group clients): made at construction when files are given (a bad
one names its flag), else on first connect from the system's authorities.
aiokafka's bootstrap hides why a handshake failed; ``tls_probe`` finds which
certificate did, for the error.

A stalled link (open, silent) is noticed when a request times out (aiokafka
then drops the connection): ``request_timeout_ms`` for the producer, and for
consumers the same but never under a fetch's wait or a JoinGroup's session
timeout (``session_timeout_ms``, 6 s) plus 5 s (``config.consumer_request_timeout_ms``).

Layout: ``config`` (tuning constants, settings validation), ``errors``
(aiokafka's exceptions and the broker's error codes mapped to the SDK's),
``connection`` (the clients: start, stop, SASL, admin requests),
``lifecycle`` (topics and subscription groups), ``producer`` and
``consumer``.  ``KafkaBackend`` below inherits ``KafkaLifecycle``, which
inherits ``KafkaConnection``.

Private internals of aiokafka relied on (tested with aiokafka 0.14.0;
``pyproject.toml`` keeps aiokafka to the minor versions that passed, and
``tests/unit/test_client_internals.py`` checks the first five without a
broker):

* ``AIOKafkaAdminClient._send_request`` (``lifecycle``): sends the two
  requests below, which the admin client has no call for, to any broker or a
  group's coordinator.
* ``aiokafka.protocol.metadata.MetadataRequest`` (the version-building class
  of aiokafka 0.13 and later; ``lifecycle._metadata``): looks a topic up with
  ``allow_auto_topic_creation=False``, since a plain look-up creates it on
  brokers that auto-create; the response is read through ``to_object()``.
* ``aiokafka.protocol.admin.DeleteGroupsRequest`` (0.13 and later;
  ``lifecycle._delete_groups``): deletes a subscription's consumer group;
  ``results`` read as ``(group_id, error_code)``.
* The protocol responses that ``create_topics`` and ``delete_topics`` return
  (``lifecycle``): ``topic_errors`` read as ``(topic, error_code[,
  error_message])`` and ``topic_error_codes`` as ``(topic, error_code)``, to
  check each topic's code.
* ``aiokafka.conn.create_conn`` (``connection._probe_refuses_credentials``):
  one connection with SASL, to tell refused credentials from an unreachable
  broker (the bootstrap error hides which).
* ``aiokafka.errors.for_code`` and the error classes' ``errno`` and
  ``retriable`` attributes (``errors``, ``lifecycle``), not in
  ``aiokafka.errors.__all__``: turn a broker error code into its exception
  class, and tell retriable errors from the rest.
* ``aiokafka.errors.SaslAuthenticationFailed``, ``CoordinatorNotAvailableError``
  and ``NotCoordinatorError`` (``errors._SASL_FAILURES``,
  ``connection._admin_call``), defined there but not in its ``__all__``.
* An undocumented behaviour: aiokafka's SCRAM exchange raises ``KeyError``
  or ``ValueError`` when the server's final message carries an error instead
  of its signature (``errors._is_sasl_failure`` counts those as refused
  credentials).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from typing import Any

from ... import naming
from ...backend import Capabilities, ConsumerType, InitialPosition
from ...errors import ConfigurationError, UnsupportedError
from ...redact import shown
from ...tls import client_context
from .config import (
    BATCH_BYTES,
    CLIENT_ID,
    COMMIT_EVERY,
    COMMIT_INTERVAL,
    FETCH_BATCH,
    HEARTBEAT_INTERVAL_MS,
    MAX_TOPIC_LENGTH,
    REVOKE_GRACE,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    SESSION_TIMEOUT_MS,
    TLS_PROTOCOLS,
    check_settings,
)
from .consumer import KafkaConsumer
from .lifecycle import KafkaLifecycle
from .producer import KafkaProducer

__all__ = [
    "BATCH_BYTES",
    "CLIENT_ID",
    "COMMIT_EVERY",
    "COMMIT_INTERVAL",
    "FETCH_BATCH",
    "HEARTBEAT_INTERVAL_MS",
    "MAX_TOPIC_LENGTH",
    "REVOKE_GRACE",
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "SESSION_TIMEOUT_MS",
    "KafkaBackend",
    "KafkaConsumer",
    "KafkaProducer",
]

log = logging.getLogger(__name__)


class KafkaBackend(KafkaLifecycle):
    """``PubSubBackend`` over Apache Kafka (see the package docstring)."""

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str = "localhost:9092",
        security_protocol: str = "PLAINTEXT",
        sasl_mechanism: str | None = None,
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        fetch_max_wait_ms: int = 5,
        partitions: int = 4,
        replication_factor: int = 1,
        retention_ms: int | None = None,
        max_message_size: int = 8 * 1024 * 1024,
        connect_timeout: float = 10.0,
        join_timeout: float = 60.0,
        request_timeout_ms: int = 40_000,
        session_timeout_ms: int = SESSION_TIMEOUT_MS,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_verify_hostname: bool = True,
    ) -> None:
        hosts, protocol, mechanism = check_settings(
            bootstrap_servers,
            security_protocol,
            sasl_mechanism,
            sasl_username,
            sasl_password,
            fetch_max_wait_ms=fetch_max_wait_ms,
            partitions=partitions,
            replication_factor=replication_factor,
            retention_ms=retention_ms,
            max_message_size=max_message_size,
            connect_timeout=connect_timeout,
            join_timeout=join_timeout,
            request_timeout_ms=request_timeout_ms,
            session_timeout_ms=session_timeout_ms,
            tls_files={"ca_file": tls_ca_file, "cert_file": tls_cert_file, "key_file": tls_key_file},
        )

        self.bootstrap_servers = ",".join(hosts)
        self.security_protocol = protocol
        self.sasl_mechanism = mechanism if protocol.startswith("SASL") else None
        self.sasl_username = sasl_username
        self._sasl_password = sasl_password
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.retention_ms = retention_ms
        self.max_message_size = max_message_size
        self.connect_timeout = float(connect_timeout)
        self.join_timeout = float(join_timeout)
        self.request_timeout_ms = request_timeout_ms
        self.session_timeout_ms = session_timeout_ms
        self.capabilities = Capabilities(
            persistent=True,
            replay_from_earliest=True,
            native_nack=False,
            ordering=True,
            consumer_groups=True,
            max_message_size=max_message_size,
            queue_lifecycle=True,
            redelivery_count=False,
            consumer_types=frozenset({"shared"}),
            exactly_once=True,
        )
        self.tls_verify_hostname = bool(tls_verify_hostname)
        self._ssl: ssl.SSLContext | None = None
        if protocol in TLS_PROTOCOLS and (tls_ca_file or tls_cert_file or tls_key_file):
            # Files given: load them now, so a bad one fails here naming its flag.
            # (The system's authorities alone are loaded off the loop in ``_connect``.)
            self._ssl = client_context(tls_ca_file, tls_cert_file, tls_key_file,
                                       self.tls_verify_hostname, "kafka")
        self._admin: Any = None
        self._clients: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self._known_topics: set[str] = set()
        self._producers: set[KafkaProducer] = set()
        self._consumers: set[KafkaConsumer] = set()
        self._closed = False

    def __repr__(self) -> str:
        user = f" user={self.sasl_username!r}" if self.sasl_username else ""
        return (
            f"<KafkaBackend bootstrap={self.bootstrap_servers!r} "
            f"security={self.security_protocol}{user}>"
        )

    # -- names ---------------------------------------------------------------

    @staticmethod
    def _check_schema(schema: Any, topic: str) -> None:
        if schema is not None and not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
            raise ConfigurationError(
                f"schema for {topic} must be a dataclass type or None (bytes), got {schema!r}"
            )

    # -- PubSubBackend -------------------------------------------------------

    async def create_producer(self, topic: str, schema: type[Any] | None, **opts: Any) -> KafkaProducer:
        """A producer for ``topic``.  ``latency_bound`` needs nothing here:
        the clients run with ``linger_ms=0``, so a lone message leaves at once
        and a stream still batches while earlier requests are in flight."""
        self._check_open()
        native = self._native(topic)
        self._check_schema(schema, topic)
        qos = naming.parse(topic).qos
        client = await self._producer_client(qos)
        await self._ensure_topic(native)
        producer = KafkaProducer(self, topic, native, schema, client, confirm=qos == "q2")
        self._producers.add(producer)
        return producer

    async def create_consumer(
        self,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        initial_position: InitialPosition = "latest",
        consumer_type: ConsumerType = "shared",
        **opts: Any,
    ) -> KafkaConsumer:
        """Join the subscription's group; ``prefetch`` is not needed (a
        partition has one reader at a time, so fetching ahead takes nothing
        from other members) and is ignored.  ``ephemeral=True``: no group,
        every partition assigned by hand, nothing committed (see the package
        docstring)."""
        self._check_open()
        native = self._native(topic)
        group = naming.kafka_group(topic, subscription)
        self._check_schema(schema, topic)
        if initial_position not in ("earliest", "latest"):
            raise ConfigurationError(
                f"initial_position for {topic} ({subscription}) must be 'earliest' or "
                f"'latest', got {shown(initial_position)}"
            )
        if consumer_type not in self.capabilities.consumer_types:
            if consumer_type in ("exclusive", "failover"):
                raise UnsupportedError(
                    f"consumer_type {shown(consumer_type)} for {topic} ({subscription}): Kafka "
                    "consumer groups only share partitions; use 'shared'"
                )
            raise ConfigurationError(
                f"consumer_type for {topic} ({subscription}) must be one of "
                f"{sorted(self.capabilities.consumer_types)}, got {shown(consumer_type)}"
            )
        await self._connect()
        await self._ensure_topic(native)
        consumer = KafkaConsumer(
            self, topic, native, subscription, group, schema, initial_position,
            bool(opts.get("ephemeral")),
        )
        await consumer._start()
        self._consumers.add(consumer)
        return consumer

    async def close(self) -> None:
        """Close every consumer and producer, then the shared clients.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Failures are logged, as every backend's close does: a producer's flush
        # failure says how many messages may not have reached the broker.
        children: list[KafkaConsumer | KafkaProducer] = [*self._consumers, *self._producers]
        for child in children:
            try:
                await child.close()
            except Exception as exc:
                log.warning("closing %r: %s", child, exc)
        for client in list(self._clients.values()):
            await self._quiet_stop(client)
        self._clients.clear()
        if self._admin is not None:
            await self._quiet_stop(self._admin)
            self._admin = None
