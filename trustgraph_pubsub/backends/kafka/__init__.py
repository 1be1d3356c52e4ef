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
A nack seeks the partition back to the nacked offset; when the replay
arrives, offsets that were meanwhile acked or are still being handled are
skipped, so only nacked messages come again.

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

Private internals of aiokafka this module relies on (checked without a
broker by ``tests/unit/test_client_internals.py``; ``pyproject.toml`` keeps
aiokafka to the minor versions that passed):

* ``AIOKafkaAdminClient._send_request``: sends the two requests below, which
  the admin client has no call for, to any broker or a group's coordinator.
* ``aiokafka.protocol.metadata.MetadataRequest`` (the version-building class
  of aiokafka 0.13 and later): looks a topic up with
  ``allow_auto_topic_creation=False``, since a plain look-up creates it on
  brokers that auto-create; the response is read through ``to_object()``.
* ``aiokafka.protocol.admin.DeleteGroupsRequest`` (0.13 and later): deletes a
  subscription's consumer group; ``results`` read as ``(group_id, error_code)``.
* The protocol responses that ``create_topics`` and ``delete_topics`` return:
  ``topic_errors`` read as ``(topic, error_code[, error_message])`` and
  ``topic_error_codes`` as ``(topic, error_code)``, to check each topic's code.
* ``aiokafka.conn.create_conn``: one connection with SASL, to tell refused
  credentials from an unreachable broker (the bootstrap error hides which).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kerr
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import DeleteGroupsRequest
from aiokafka.protocol.metadata import MetadataRequest

from .. import naming
from ..backend import (
    BaseMessage,
    Capabilities,
    ConsumerType,
    InitialPosition,
    Message,
    check_properties,
    encode_payload,
    iterate_messages,
)
from ..errors import (
    AuthenticationError,
    BadTopicError,
    BrokerConnectionError,
    ClosedError,
    ConfigurationError,
    ConnectionLostError,
    MessageTooLargeError,
    Outgoing,
    PubSubError,
    PubSubTimeoutError,
    QueueNotFoundError,
    UnsupportedError,
)
from ..redact import shown
from ..retry import Backoff, retry

log = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
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
#: session timeout; heartbeats are frequent so that a rebalance (a consumer
#: joining) is noticed within half a second by the other members.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 500
#: how long a revoked partition waits for in-flight messages to be acked
#: before its prefix is committed (fewer duplicates after a rebalance).
REVOKE_GRACE = 1.0
#: records taken from aiokafka's fetch buffer per call.
FETCH_BATCH = 500
#: producer futures kept before finished ones are swept.
_SWEEP_AT = 4096

_SASL_FAILURES: tuple[type[BaseException], ...] = (
    kerr.SaslAuthenticationFailed,
    kerr.AuthenticationFailedError,
    kerr.UnsupportedSaslMechanismError,
    kerr.IllegalSaslStateError,
)
_NON_EMPTY_GROUP = 68
_GROUP_NOT_FOUND = 69


def _is_sasl_failure(exc: BaseException) -> bool:
    """True for errors raised by a SASL exchange the broker refused.

    aiokafka's SCRAM code raises ``KeyError``/``ValueError`` when the server's
    final message carries an error instead of its signature.
    """
    return isinstance(exc, (*_SASL_FAILURES, KeyError, ValueError))


def _connection_error(exc: BaseException) -> bool:
    return isinstance(
        exc,
        (
            kerr.KafkaConnectionError,
            kerr.KafkaTimeoutError,
            kerr.NodeNotReadyError,
            kerr.RequestTimedOutError,
            OSError,
            TimeoutError,
        ),
    )


def _lost(exc: BaseException, what: str) -> PubSubError:
    """Map an aiokafka error raised after connecting to the SDK's exceptions."""
    if isinstance(exc, kerr.MessageSizeTooLargeError):
        return MessageTooLargeError(f"{what}: the broker refused the message as too large ({exc})")
    if _connection_error(exc) or getattr(exc, "retriable", False):
        return ConnectionLostError(f"{what}: connection to Kafka lost ({type(exc).__name__}: {exc})")
    if isinstance(
        exc,
        (
            kerr.TopicAuthorizationFailedError,
            kerr.GroupAuthorizationFailedError,
            kerr.ClusterAuthorizationFailedError,
        ),
    ):
        return AuthenticationError(f"{what}: not authorised by the broker ({type(exc).__name__})")
    return PubSubError(f"{what}: Kafka error {type(exc).__name__}: {exc}")


async def _settle_at_end(client: Any, tps: list[Any]) -> dict[Any, int]:
    """Move each partition's position to the true end of its log; the positions.

    ``seek_to_end`` and ``auto_offset_reset="latest"`` ask ListOffsets, and
    some brokers answer it wrongly (tansu answers one past the *first* offset
    of the last record batch, so a "latest" subscriber would get part of the
    last batch again).  The high watermark in a fetch response is right on
    every broker, so fetch once and skip to it.  Records fetched meanwhile
    were written before the subscription was made and are dropped.
    """
    while True:
        assigned = client.assignment()
        tps = [tp for tp in tps if tp in assigned]
        if all(client.highwater(tp) is not None for tp in tps):
            break
        await client.getmany(*tps, timeout_ms=100)
    out: dict[Any, int] = {}
    for tp in tps:
        pos: int = await client.position(tp)
        end: int = max(pos, client.highwater(tp))
        if end > pos:
            client.seek(tp, end)
        out[tp] = end
    return out


@dataclasses.dataclass(eq=False)
class _Partition:
    """Delivery bookkeeping of one assigned partition (one assignment generation).

    ``pending`` maps each delivered, unacknowledged offset to whether it was
    nacked (waiting to come again).  ``high`` is one past the highest offset
    delivered, ``stream_next`` one past the last offset the fetch stream
    yielded (a nack below it seeks back), ``committed`` the last offset sent
    to the broker.
    """

    tp: Any
    pending: dict[int, bool] = dataclasses.field(default_factory=dict)
    high: int = -1
    stream_next: int = -1
    committed: int = -1
    redeliveries: dict[int, int] = dataclasses.field(default_factory=dict)
    revoked: bool = False

    def commit_point(self) -> int:
        """The offset the group may commit: nothing at or after it is unacked."""
        if self.pending:
            return min(self.pending)
        return self.high

    def in_flight(self) -> bool:
        return any(not nacked for nacked in self.pending.values())


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards aiokafka's rebalance callbacks to the consumer."""

    def __init__(self, owner: KafkaConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        await self._owner._on_assigned(assigned)


class KafkaProducer:
    """Sends to one topic through the backend's shared client for its qos.

    q0 and q1 sends return once the record is in aiokafka's batch
    accumulator: many are in flight together, and ``flush`` waits for their
    delivery reports.  A failed delivery is raised by the next ``send`` or
    ``flush``, carrying in ``unconfirmed`` every message whose delivery
    failed (so that ``Producer`` sends them again, or says how many were
    lost).  q2 sends wait for the broker's confirmation.
    """

    def __init__(
        self,
        backend: KafkaBackend,
        topic: str,
        native: str,
        schema: type[Any] | None,
        client: Any,
        confirm: bool,
    ) -> None:
        self.topic = topic
        self._backend = backend
        self._native = native
        self._schema = schema
        self._client = client
        self._confirm = confirm
        self._max = backend.capabilities.max_message_size
        #: delivery futures of pipelined sends, with what was sent
        self._pending: list[tuple[asyncio.Future[Any], Outgoing]] = []
        #: messages whose delivery failed, not yet handed to a caller in an error
        self._failed: list[Outgoing] = []
        self._error: PubSubError | None = None
        self._closed = False

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        if self._closed:
            raise ClosedError(f"producer for {self.topic} is closed")
        if self._error is not None:
            raise self._take_error()
        payload = encode_payload(self._schema, message, self.topic)
        props = check_properties(properties, self.topic)
        if len(payload) > self._max:
            raise MessageTooLargeError(
                f"message for {self.topic} is {len(payload)} bytes, over the limit of "
                f"{self._max} (--kafka-max-message-size)"
            )
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key for {self.topic} must be str, got {type(key).__name__}")
        headers = [(k, v.encode()) for k, v in props.items()] if props else None
        try:
            fut = await self._client.send(
                self._native,
                payload,
                key=None if key is None else key.encode(),
                headers=headers,
            )
            if self._confirm:
                await fut
                return
        except kerr.KafkaError as exc:
            raise _lost(exc, f"send to {self.topic}") from exc
        self._pending.append((fut, (payload, props or None, key)))
        if len(self._pending) >= _SWEEP_AT:
            self._sweep()

    def _record(self, exc: BaseException, item: Outgoing) -> None:
        self._failed.append(item)
        if self._error is None:
            self._error = _lost(exc, f"send to {self.topic}")
            self._error.__cause__ = exc

    def _take_error(self) -> PubSubError:
        """The pending error, carrying every failed message so far; both are reset."""
        error, self._error = self._error, None
        assert error is not None
        error.unconfirmed, self._failed = tuple(self._failed), []
        log.warning(
            "%d message(s) to %s were not delivered: %s", len(error.unconfirmed), self.topic, error
        )
        return error

    def _sweep(self) -> None:
        """Drop finished delivery futures, keeping the failures."""
        still: list[tuple[asyncio.Future[Any], Outgoing]] = []
        for entry in self._pending:
            fut = entry[0]
            if not fut.done():
                still.append(entry)
                continue
            exc = fut.exception()
            if exc is not None:
                self._record(exc, entry[1])
        self._pending = still

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            results = await asyncio.gather(*(f for f, _ in pending), return_exceptions=True)
            for res, (_, item) in zip(results, pending, strict=True):
                if isinstance(res, BaseException):
                    self._record(res, item)
        if self._error is not None:
            raise self._take_error()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backend._producers.discard(self)
        await self.flush()

    def __repr__(self) -> str:
        return f"<KafkaProducer topic={self.topic!r} native={self._native!r}>"


class KafkaConsumer:
    """One member of the subscription's consumer group (see the module docstring)."""

    def __init__(
        self,
        backend: KafkaBackend,
        topic: str,
        native: str,
        subscription: str,
        group: str,
        schema: type[Any] | None,
        initial_position: InitialPosition,
        ephemeral: bool = False,
    ) -> None:
        self.topic = topic
        #: never commit (see "Ephemeral subscriptions" in the module docstring)
        self._ephemeral = ephemeral
        self.subscription = subscription
        self._backend = backend
        self._native = native
        self._group = group
        self._schema = schema
        self._initial_position = initial_position
        self._client: Any = None
        self._parts: dict[Any, _Partition] = {}
        self._buffer: deque[tuple[_Partition, Any]] = deque()
        self._fetch_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._acks = 0
        self._acked: asyncio.Event | None = None  # set on ack while a revocation waits
        self._settle: list[Any] = []  # partitions a "latest" start resolved by ListOffsets
        self._commit_task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    async def _start(self) -> None:
        if self._ephemeral:
            await self._start_assigned()
            return
        b = self._backend
        self._client = AIOKafkaConsumer(
            **b._client_kwargs(),
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset=self._initial_position,
            fetch_max_wait_ms=b.fetch_max_wait_ms,
            max_partition_fetch_bytes=max(1024 * 1024, b.max_message_size + _OVERHEAD),
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        )
        await b._start_client(self._client, f"consumer of {self.topic} ({self.subscription})")
        try:
            self._client.subscribe([self._native], listener=_Listener(self))
            try:
                async with asyncio.timeout(b.join_timeout):
                    await self._ready.wait()
            except TimeoutError:
                raise PubSubTimeoutError(
                    f"consumer of {self.topic} (subscription {self.subscription!r}) did not "
                    f"join its group {self._group!r} within {b.join_timeout:g}s "
                    "(--kafka-join-timeout); is the broker's group coordinator healthy?"
                ) from None
            await self._settle_latest()
        except BaseException:
            await self._stop_client()
            raise
        self._commit_task = asyncio.get_running_loop().create_task(
            self._commit_loop(), name=f"kafka-commit-{self._group}"
        )

    async def _start_assigned(self) -> None:
        """An ephemeral subscription: every partition assigned by hand, no group.

        It has one consumer by definition, so there is nothing to share and no
        group to join (a first JoinGroup costs seconds on some brokers, and a
        request/response caller makes one of these per start).  Positions
        start at ``initial_position`` and live only in this client.
        """
        b = self._backend
        tps = await b._partitions(self._native)
        self._client = AIOKafkaConsumer(
            **b._client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset=self._initial_position,
            fetch_max_wait_ms=b.fetch_max_wait_ms,
            max_partition_fetch_bytes=max(1024 * 1024, b.max_message_size + _OVERHEAD),
        )
        await b._start_client(self._client, f"consumer of {self.topic} ({self.subscription})")
        try:
            self._client.assign(tps)
            async with asyncio.timeout(b.connect_timeout):
                if self._initial_position == "earliest":
                    await self._client.seek_to_beginning(*tps)
                    positions = {tp: await self._client.position(tp) for tp in tps}
                else:
                    positions = await _settle_at_end(self._client, tps)
        except TimeoutError:
            await self._stop_client()
            raise PubSubTimeoutError(
                f"consumer of {self.topic} ({self.subscription}): the partitions' positions "
                f"were not known within {b.connect_timeout:g}s"
            ) from None
        except BaseException:
            await self._stop_client()
            raise
        for tp, off in positions.items():
            part = self._parts[tp] = _Partition(tp)
            part.committed = off
        self._ready.set()

    async def _settle_latest(self) -> None:
        """Correct a "latest" start to the fetch high watermark (see ``_settle_at_end``).

        Best effort: if the group rebalances meanwhile the ListOffsets
        position already committed stands, which on a correct broker is right.
        """
        tps, self._settle = self._settle, []
        if not tps:
            return
        try:
            async with asyncio.timeout(self._backend.connect_timeout):
                ends = await _settle_at_end(self._client, tps)
                moved = {tp: end for tp, end in ends.items()
                         if tp in self._parts and end > self._parts[tp].committed}
                if moved and not self._ephemeral:
                    await self._client.commit(moved)
                    for tp, end in moved.items():
                        self._parts[tp].committed = end
        except (kerr.KafkaError, TimeoutError) as exc:
            log.debug("%s: latest start not corrected: %s: %s", self._group, type(exc).__name__, exc)

    async def _stop_client(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._backend.connect_timeout):
                await self._client.stop()

    async def close(self) -> None:
        if self._closed:
            return
        self._closing = True
        if self._commit_task is not None:
            # Stopped by flag, not cancel(): a round in progress finishes its
            # bounded commit, and no cancellation can be lost in a timeout race.
            self._wake.set()
            await self._commit_task
        await self._commit()
        self._buffer.clear()
        for p in self._parts.values():
            p.revoked = True
        await self._stop_client()
        self._backend._consumers.discard(self)

    async def unsubscribe(self) -> None:
        """Leave the group, then delete it with its committed offsets.

        The group is kept while other members are still connected: Kafka
        refuses to delete a group that is not empty, and the subscription
        lives on with them.
        """
        await self.close()
        if not self._ephemeral:  # an ephemeral subscription has no group
            await self._backend._delete_groups([self._group], strict=False)

    # -- rebalance -----------------------------------------------------------

    async def _on_revoked(self, revoked: set[Any]) -> None:
        parts = [self._parts[tp] for tp in revoked if tp in self._parts]
        if not self._closing and any(p.in_flight() for p in parts):
            # Give handlers a moment to ack what they hold, so the new owner
            # does not get it again.
            self._acked = asyncio.Event()
            try:
                async with asyncio.timeout(REVOKE_GRACE):
                    while any(p.in_flight() for p in parts):
                        await self._acked.wait()
                        self._acked.clear()
            except TimeoutError:
                pass
            finally:
                self._acked = None
        await self._commit(parts)
        for p in parts:
            p.revoked = True
            del self._parts[p.tp]
        if parts:
            gone = set(parts)
            self._buffer = deque(item for item in self._buffer if item[0] not in gone)

    async def _on_assigned(self, assigned: set[Any]) -> None:
        for tp in assigned:
            self._parts[tp] = _Partition(tp)
        client = self._client
        try:
            async with asyncio.timeout(self._backend.connect_timeout):
                tps = sorted(assigned)
                committed = await asyncio.gather(*(client.committed(tp) for tp in tps))
                missing = [tp for tp, off in zip(tps, committed, strict=True) if off is None]
                if missing and self._ready.is_set() and not self._ephemeral:
                    # Partitions this subscription has never seen: everything
                    # in them was written after it existed.  (An ephemeral one
                    # never commits, so every partition looks unseen: it starts
                    # at its initial position instead.)
                    await client.seek_to_beginning(*missing)
                if missing:
                    # ``position`` resolves the start now, so a message sent after
                    # create_consumer returns is not skipped by a later reset.
                    offsets = {tp: await client.position(tp) for tp in missing}
                    if not self._ephemeral:
                        await client.commit(offsets)
                    for tp, off in offsets.items():
                        self._parts[tp].committed = off
                    if not self._ready.is_set() and self._initial_position == "latest":
                        self._settle = missing
        except (kerr.KafkaError, TimeoutError) as exc:
            log.warning(
                "consumer of %s (%s): could not settle positions after assignment: %s: %s",
                self.topic, self.subscription, type(exc).__name__, exc,
            )
            return
        self._ready.set()

    # -- commits -------------------------------------------------------------

    async def _commit(self, parts: list[_Partition] | None = None) -> None:
        """Commit the acked prefix of each partition that moved forward."""
        if self._ephemeral:
            self._acks = 0
            return  # nothing of an ephemeral subscription is kept by the broker
        todo = list(self._parts.values()) if parts is None else parts
        offsets: dict[Any, int] = {}
        for p in todo:
            point = p.commit_point()
            if not p.revoked and point > p.committed:
                offsets[p.tp] = point
        if not offsets or self._client is None:
            return
        self._acks = 0
        try:
            # aiokafka retries retriable commit errors (an unknown topic, say,
            # after the broker lost its state) without end: bound it.
            async with asyncio.timeout(self._backend.connect_timeout):
                await self._client.commit(offsets)
        except (kerr.KafkaError, TimeoutError) as exc:
            # The next round (or the new owner of a revoked partition) picks
            # it up; an unacked suffix is redelivered, nothing acked is lost.
            log.warning(
                "commit for %s failed (%s: %s); the acknowledged prefix is committed on a "
                "later round, or redelivered (never lost) if this consumer goes first",
                self._group, type(exc).__name__, exc,
            )
            return
        for p in todo:
            if p.tp in offsets:
                p.committed = max(p.committed, offsets[p.tp])

    async def _commit_loop(self) -> None:
        """Commit every ``COMMIT_INTERVAL`` s, or sooner when woken; ends when closing."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(COMMIT_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                await self._commit()
            except Exception:  # never let the committer die silently
                log.exception("background commit for %s failed", self._group)

    async def commit(self) -> None:
        """Commit the acknowledged prefix now instead of waiting for the next round."""
        await self._commit()

    # -- receiving -----------------------------------------------------------

    def _pop(self) -> BaseMessage | None:
        buf = self._buffer
        while buf:
            p, rec = buf.popleft()
            if p.revoked:
                continue
            off: int = rec.offset
            p.stream_next = off + 1
            if off >= p.high:
                p.high = off + 1
                p.pending[off] = False
                count = 0
            elif p.pending.get(off) is True:
                p.pending[off] = False
                count = p.redeliveries.get(off, 0) + 1
                p.redeliveries[off] = count
            else:
                continue  # acked or still being handled: not nacked, not again
            headers = rec.headers
            props = (
                {k: (v or b"").decode("utf-8", "replace") for k, v in headers} if headers else {}
            )
            value = rec.value if rec.value is not None else b""
            return BaseMessage(value, props, self.topic, self._schema, count, (p, off))
        return None

    async def receive(self, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        msg = self._pop()
        if msg is not None:
            return msg
        if self._closed:
            raise ClosedError(f"consumer of {self.topic} ({self.subscription}) is closed")
        try:
            async with asyncio.timeout(timeout) as cm:
                while True:
                    async with self._fetch_lock:
                        msg = self._pop()
                        if msg is not None:
                            return msg
                        await self._fetch()
        except TimeoutError:
            if cm.expired():
                raise PubSubTimeoutError(
                    f"no message on {self.topic} ({self.subscription}) within {timeout}s"
                ) from None
            raise

    async def _fetch(self) -> None:
        if self._closed:
            raise ClosedError(f"consumer of {self.topic} ({self.subscription}) is closed")
        try:
            batch = await self._client.getmany(timeout_ms=1000, max_records=FETCH_BATCH)
        except kerr.ConsumerStoppedError as exc:
            raise ClosedError(f"consumer of {self.topic} ({self.subscription}) is closed") from exc
        except kerr.KafkaError as exc:
            raise _lost(exc, f"receive on {self.topic} ({self.subscription})") from exc
        parts = self._parts
        for tp, records in batch.items():
            p = parts.get(tp)
            if p is None:
                continue
            self._buffer.extend((p, rec) for rec in records)

    def __aiter__(self) -> AsyncIterator[Message]:
        return iterate_messages(self)

    # -- acknowledgement -----------------------------------------------------

    def _handle(self, message: Message) -> tuple[_Partition, int]:
        handle = getattr(message, "handle", None)
        if not (isinstance(handle, tuple) and len(handle) == 2 and isinstance(handle[0], _Partition)):
            raise PubSubError(
                f"message {message!r} was not received by a Kafka consumer of {self.topic}"
            )
        return handle

    async def acknowledge(self, message: Message) -> None:
        try:  # the hot path: no type checks unless the handle is not ours
            p, off = message.handle  # type: ignore[attr-defined]
            pending = p.pending
        except (AttributeError, TypeError, ValueError):
            p, off = self._handle(message)  # raises the error that names the problem
            pending = p.pending
        if p.revoked or pending.pop(off, None) is None:
            return
        if p.redeliveries:
            p.redeliveries.pop(off, None)
        self._acks += 1
        if self._acks >= COMMIT_EVERY:
            self._wake.set()
        if self._acked is not None:
            self._acked.set()

    async def negative_acknowledge(self, message: Message) -> None:
        p, off = self._handle(message)
        if p.revoked or off not in p.pending:
            return
        p.pending[off] = True
        if self._acked is not None:
            self._acked.set()
        if off < p.stream_next:
            try:
                self._client.seek(p.tp, off)
            except kerr.IllegalStateError:
                return  # revoked meanwhile: the new owner gets it
            p.stream_next = off
            self._buffer = deque(item for item in self._buffer if item[0] is not p)

    def __repr__(self) -> str:
        return (
            f"<KafkaConsumer topic={self.topic!r} subscription={self.subscription!r} "
            f"group={self._group!r}>"
        )


class KafkaBackend:
    """``PubSubBackend`` over Apache Kafka (see the module docstring)."""

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
    ) -> None:
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
        self._ssl: ssl.SSLContext | None = None
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

    # -- connecting ----------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": CLIENT_ID,
            "security_protocol": self.security_protocol,
        }
        if self._ssl is not None:
            kw["ssl_context"] = self._ssl
        if self.sasl_mechanism is not None:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self._sasl_password
        return kw

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")

    async def _start_client(self, client: Any, what: str) -> None:
        """Start an aiokafka client within ``connect_timeout``, mapping failures.

        aiokafka retries some bootstrap failures for as long as its request
        timeout allows; the wait is bounded here so that a wrong address fails
        fast and resilient clients can retry with their own backoff.
        """
        try:
            async with asyncio.timeout(self.connect_timeout):
                await client.start()
        except asyncio.CancelledError:
            await self._quiet_stop(client)
            raise
        except Exception as exc:
            await self._quiet_stop(client)
            raise await self._classify(exc, what) from exc

    async def _quiet_stop(self, client: Any) -> None:
        stop = getattr(client, "stop", None) or client.close
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await stop()

    async def _classify(self, exc: BaseException, what: str) -> PubSubError:
        """Tell refused credentials from an unreachable broker."""
        if self.sasl_mechanism is not None:
            refused = _is_sasl_failure(exc) or await self._probe_refuses_credentials()
            if refused:
                return AuthenticationError(
                    f"{what}: Kafka at {self.bootstrap_servers} refused the SASL "
                    f"{self.sasl_mechanism} credentials of user {self.sasl_username!r}; "
                    "check --kafka-sasl-username / --kafka-sasl-password "
                    "(KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)"
                )
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {self.connect_timeout:g}s (--kafka-connect-timeout)"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return BrokerConnectionError(
            f"{what}: cannot connect to Kafka at {self.bootstrap_servers} ({detail}); "
            "is the broker running and is --kafka-bootstrap-servers "
            "(KAFKA_BOOTSTRAP_SERVERS) right?"
        )

    async def _probe_refuses_credentials(self) -> bool:
        """Open one connection with SASL to see whether authentication is what fails.

        aiokafka's bootstrap folds a refused SASL exchange into a generic
        "unable to bootstrap" error.
        """
        first = self.bootstrap_servers.split(",")[0]
        host, _, port = first.rpartition(":")
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await create_conn(
                    host or first,
                    int(port) if host else 9092,
                    client_id=CLIENT_ID,
                    security_protocol=self.security_protocol,
                    ssl_context=self._ssl,
                    sasl_mechanism=self.sasl_mechanism,
                    sasl_plain_username=self.sasl_username,
                    sasl_plain_password=self._sasl_password,
                )
        except Exception as exc:
            return _is_sasl_failure(exc)
        conn.close()
        return False

    async def _connect(self) -> Any:
        """Start the admin client on first use (constructors do no I/O)."""
        self._check_open()
        if self._admin is not None:
            return self._admin
        async with self._lock:
            if self._admin is None:
                if self.security_protocol in ("SSL", "SASL_SSL") and self._ssl is None:
                    # Loading the system CA bundle reads files: keep it off the loop.
                    self._ssl = await asyncio.to_thread(ssl.create_default_context)
                admin = AIOKafkaAdminClient(
                    **self._client_kwargs(), request_timeout_ms=int(self.connect_timeout * 1000)
                )
                await self._start_client(admin, "admin client")
                self._admin = admin
        return self._admin

    async def _producer_client(self, qos: str) -> Any:
        client = self._clients.get(qos)
        if client is not None:
            return client
        await self._connect()
        async with self._lock:
            client = self._clients.get(qos)
            if client is None:
                client = AIOKafkaProducer(
                    **self._client_kwargs(),
                    acks=0 if qos == "q0" else "all",
                    enable_idempotence=qos == "q2",
                    max_request_size=self.max_message_size + _OVERHEAD,
                    linger_ms=0,
                    request_timeout_ms=self.request_timeout_ms,
                )
                try:
                    await self._start_client(client, f"{qos} producer")
                except PubSubError as exc:
                    cause = exc.__cause__
                    if qos == "q2" and isinstance(cause, kerr.KafkaError) and not _connection_error(cause):
                        raise UnsupportedError(
                            f"q2 needs an idempotent producer and Kafka at "
                            f"{self.bootstrap_servers} refused one "
                            f"(InitProducerId: {type(cause).__name__}); use q1 on this broker"
                        ) from cause
                    raise
                self._clients[qos] = client
        return client

    # -- names ---------------------------------------------------------------

    @staticmethod
    def _native(topic: str) -> str:
        native = naming.kafka_topic(topic)
        if len(native) > MAX_TOPIC_LENGTH:
            raise BadTopicError(
                f"topic {topic!r}: Kafka topic {native!r} is {len(native)} characters, "
                f"over Kafka's limit of {MAX_TOPIC_LENGTH}; shorten the tenant, namespace or queue"
            )
        return native

    @staticmethod
    def _check_schema(schema: Any, topic: str) -> None:
        if schema is not None and not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
            raise ConfigurationError(
                f"schema for {topic} must be a dataclass type or None (bytes), got {schema!r}"
            )

    # -- topics --------------------------------------------------------------

    async def _metadata(self, native: str) -> dict[str, Any] | None:
        """The topic's metadata, or None if it does not exist.

        Asks with ``allow_auto_topic_creation=False``: a plain metadata
        request would make brokers with auto-creation on create the topic.
        """
        admin = await self._connect()

        async def ask() -> dict[str, Any] | None:
            resp = await admin._send_request(
                MetadataRequest([native], allow_auto_topic_creation=False)
            )
            for entry in resp.to_object()["topics"]:
                if entry["topic"] != native:
                    continue
                code = entry["error_code"]
                if code == kerr.UnknownTopicOrPartitionError.errno:
                    return None
                if code != 0:
                    raise kerr.for_code(code)()
                found: dict[str, Any] = entry
                return found
            return None

        result: dict[str, Any] | None = await self._admin_call(ask, f"look up topic {native!r}")
        return result

    async def _topic_exists(self, native: str) -> bool:
        return await self._metadata(native) is not None

    async def _ensure_topic(self, native: str) -> None:
        if native in self._known_topics:
            return
        if not await self._topic_exists(native):
            await self._create_topic(native)
        self._known_topics.add(native)

    async def _create_topic(self, native: str) -> None:
        admin = await self._connect()
        configs = {"max.message.bytes": str(self.max_message_size + _OVERHEAD)}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        new = NewTopic(native, self.partitions, self.replication_factor, topic_configs=configs)

        async def create() -> Any:
            return await admin.create_topics([new], timeout_ms=int(self.connect_timeout * 1000))

        resp = await self._admin_call(create, f"create topic {native!r}")
        for entry in resp.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code in (0, kerr.TopicAlreadyExistsError.errno):
                continue
            raise self._code_error(code, f"create topic {name!r}", message)

    def _code_error(self, code: int, what: str, message: str | None = None) -> PubSubError:
        """An SDK exception for a per-resource error code in an admin response."""
        err = kerr.for_code(code)
        detail = f"{err.__name__}" + (f": {message}" if message else "")
        if code == kerr.InvalidTopicError.errno:
            return BadTopicError(f"{what}: the broker refused the name ({detail})")
        if code == kerr.InvalidPartitionsError.errno:
            return ConfigurationError(f"{what}: bad --kafka-partitions {self.partitions} ({detail})")
        if code == kerr.InvalidReplicationFactorError.errno:
            return ConfigurationError(
                f"{what}: bad --kafka-replication-factor {self.replication_factor} ({detail}); "
                "it cannot exceed the number of brokers"
            )
        if code == kerr.InvalidConfigurationError.errno:
            return ConfigurationError(
                f"{what}: the broker refused the topic config ({detail}); check "
                "--kafka-retention-ms and --kafka-max-message-size"
            )
        if code in (
            kerr.TopicAuthorizationFailedError.errno,
            kerr.GroupAuthorizationFailedError.errno,
            kerr.ClusterAuthorizationFailedError.errno,
        ):
            return AuthenticationError(f"{what}: not authorised by the broker ({detail})")
        return PubSubError(f"{what}: the broker answered {detail}")

    async def _admin_call(self, fn: Any, what: str) -> Any:
        """One admin request, retried with backoff on retriable errors for ``connect_timeout``."""
        retriable = (
            kerr.KafkaConnectionError,
            kerr.NodeNotReadyError,
            kerr.RequestTimedOutError,
            kerr.KafkaTimeoutError,
            kerr.NotControllerError,
            kerr.LeaderNotAvailableError,
            kerr.CoordinatorNotAvailableError,
            kerr.NotCoordinatorError,
            TimeoutError,
        )
        try:
            return await retry(
                fn,
                retry_on=retriable,
                deadline=self.connect_timeout,
                backoff=Backoff(base=0.05, cap=1.0),
                what=f"kafka {what}",
            )
        except kerr.KafkaError as exc:
            raise _lost(exc, what) from exc
        except TimeoutError as exc:
            raise ConnectionLostError(f"{what}: Kafka did not answer in time") from exc

    async def _group_client(self, group: str) -> Any:
        """A consumer client for a group that never joins it (offset look-ups and commits)."""
        client = AIOKafkaConsumer(**self._client_kwargs(), group_id=group, enable_auto_commit=False)
        await self._start_client(client, f"group {group!r} client")
        return client

    async def _partitions(self, native: str) -> list[Any]:
        meta = await self._metadata(native)
        if meta is None:
            raise QueueNotFoundError(f"Kafka topic {native!r} does not exist")
        return [TopicPartition(native, p["partition"]) for p in sorted(
            meta["partitions"], key=lambda p: p["partition"])]

    async def _delete_groups(self, groups: list[str], *, strict: bool) -> None:
        """Delete consumer groups; missing ones are fine, non-empty ones raise when ``strict``."""
        if not groups:
            return
        admin = await self._connect()

        async def delete() -> Any:
            out = []
            by_node: dict[int, list[str]] = {}
            for g in groups:
                by_node.setdefault(await admin.find_coordinator(g), []).append(g)
            for node, names in by_node.items():
                resp = await admin._send_request(DeleteGroupsRequest(names), node)
                out.extend(resp.results)
            return out

        results = await self._admin_call(delete, f"delete consumer groups {groups}")
        for group_id, code in results:
            if code in (0, _GROUP_NOT_FOUND):
                continue
            if code == _NON_EMPTY_GROUP:
                if strict:
                    raise PubSubError(
                        f"subscription group {group_id!r} still has connected consumers; "
                        "close them before deleting the queue"
                    )
                log.info("group %s still has members; kept", group_id)
                continue
            raise self._code_error(code, f"delete consumer group {group_id!r}")

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
        every partition assigned by hand, nothing committed (see the module
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

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Create the topic and start the subscription at the end of each partition.

        Idempotent: an existing topic is kept, and a partition the group has
        already committed an offset for keeps it (its backlog stays).
        """
        self._check_open()
        native = self._native(topic)
        group = naming.kafka_group(topic, subscription)
        await self._ensure_topic(native)
        tps = await self._partitions(native)
        client = await self._group_client(group)
        try:
            client.assign(tps)

            async def settle() -> None:
                async with asyncio.timeout(self.connect_timeout):
                    fresh = [tp for tp in tps if await client.committed(tp) is None]
                    if fresh:
                        await client.seek_to_end(*fresh)
                        await client.commit(await _settle_at_end(client, fresh))

            await self._admin_call(settle, f"start subscription {subscription!r} on {topic}")
        finally:
            await self._quiet_stop(client)

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        await self.create_queue(topic, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        """True when the topic exists and the subscription's group has offsets on it."""
        self._check_open()
        native = self._native(topic)
        group = naming.kafka_group(topic, subscription)
        if not await self._topic_exists(native):
            self._known_topics.discard(native)
            return False
        tps = await self._partitions(native)
        client = await self._group_client(group)
        try:
            client.assign(tps)

            async def any_committed() -> bool:
                for tp in tps:
                    if await client.committed(tp) is not None:
                        return True
                return False

            found: bool = await self._admin_call(
                any_committed, f"offsets of subscription {subscription!r} on {topic}"
            )
            return found
        finally:
            await self._quiet_stop(client)

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """Delete the subscription's group, or with no subscription the topic
        and the groups named for its subscriptions.

        A group belongs to the topic whose name plus ``naming.KAFKA_GROUP_SEPARATOR``
        prefixes it; the separator cannot occur in names, so that is unambiguous.
        """
        self._check_open()
        native = self._native(topic)
        if subscription is not None:
            await self._delete_groups([naming.kafka_group(topic, subscription)], strict=True)
            return
        admin = await self._connect()

        async def delete() -> Any:
            return await admin.delete_topics([native], timeout_ms=int(self.connect_timeout * 1000))

        resp = await self._admin_call(delete, f"delete topic {native!r}")
        for name, code in resp.topic_error_codes:
            if code not in (0, kerr.UnknownTopicOrPartitionError.errno):
                raise self._code_error(code, f"delete topic {name!r}")
        self._known_topics.discard(native)

        async def owned_groups() -> list[str]:
            prefix = native + naming.KAFKA_GROUP_SEPARATOR
            return [g[0] for g in await admin.list_consumer_groups() if g[0].startswith(prefix)]

        groups = await self._admin_call(owned_groups, f"subscriptions of {native!r}")
        await self._delete_groups(groups, strict=False)

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
