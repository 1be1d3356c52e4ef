"""Queue lifecycle on Kafka: topics and subscription groups, through the admin client.

``KafkaLifecycle`` is the part of ``KafkaBackend`` that maps topic names,
looks topics up, creates them, starts a subscription's group at the end of
each partition, tells whether a subscription exists and deletes topics and
groups (the package docstring says what each of these means on Kafka).
Every per-topic and per-group error code the broker returns is checked.

``KafkaBackend`` inherits this class and sets in its constructor every
attribute declared below.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import TopicPartition
from aiokafka import errors as kerr
from aiokafka.admin import NewTopic
from aiokafka.protocol.admin import DeleteGroupsRequest
from aiokafka.protocol.metadata import MetadataRequest

from ... import naming
from ...errors import BadTopicError, PubSubError, QueueNotFoundError
from .config import _OVERHEAD, MAX_TOPIC_LENGTH
from .connection import KafkaConnection, _settle_at_end
from .errors import _GROUP_NOT_FOUND, _NON_EMPTY_GROUP, _code_error

log = logging.getLogger(__name__)


class KafkaLifecycle(KafkaConnection):
    """Topics and subscription groups (see the module docstring)."""

    partitions: int
    replication_factor: int
    retention_ms: int | None
    _known_topics: set[str]

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
        """``errors._code_error`` with this backend's topic settings."""
        return _code_error(
            code, what, message,
            partitions=self.partitions, replication_factor=self.replication_factor,
        )

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

    # -- queues --------------------------------------------------------------

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
                        try:
                            await client.commit(await _settle_at_end(client, fresh))
                        except kerr.CommitFailedError:
                            # The group has live members (a consumer joined meanwhile):
                            # they own its offsets now, so the subscription exists.
                            log.info("subscription %r on %s is live; its offsets are its "
                                     "members'", subscription, topic)

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
