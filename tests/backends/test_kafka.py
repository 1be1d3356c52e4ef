"""The Kafka backend against a real broker (tansu, or TG_KAFKA_BOOTSTRAP).

What the conformance battery does not look at closely: the committed offset
itself (only the acked prefix is committed, in the background, and on close),
nack by seeking back, the group's start position, admin lifecycle and the
errors a person gets for bad input.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as kerr

from tests.brokers import NO_IDEMPOTENT_PRODUCER, Broker
from trustgraph_pubsub import (
    AuthenticationError,
    BadTopicError,
    BrokerConnectionError,
    ConfigurationError,
    MessageTooLargeError,
    PubSubTimeoutError,
    UnsupportedError,
    naming,
)
from trustgraph_pubsub.backends import kafka as kb
from trustgraph_pubsub.backends.kafka.config import ANSWER_MARGIN_MS
from trustgraph_schema.topic import topic as make_topic


@dataclass
class Item:
    n: int
    text: str = ""


def fresh(label: str, qos: str = "q1") -> str:
    return make_topic(f"kt-{uuid.uuid4().hex[:10]}-{label}", qos=qos, tenant="tg", namespace="kafkatest")


async def committed(broker: Broker, name: str, sub: str, partition: int = 0) -> int | None:
    """The group's committed offset, read by a client that never joins the group."""
    group = naming.kafka_group(name, sub)
    tp = TopicPartition(naming.kafka_topic(name), partition)
    client = AIOKafkaConsumer(bootstrap_servers=broker.backend_config()["kafka_bootstrap_servers"],
                              group_id=group, enable_auto_commit=False)
    await client.start()
    try:
        client.assign([tp])
        offset: int | None = await client.committed(tp)
        return offset
    finally:
        await client.stop()


async def committed_becomes(broker: Broker, name: str, sub: str, want: int, within: float = 10.0) -> int | None:
    deadline = time.monotonic() + within
    while True:
        got = await committed(broker, name, sub)
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


async def receive_n(c: Any, n: int, within: float = 30.0) -> list[Any]:
    out = []
    for _ in range(n):
        out.append(await c.receive(timeout=within))
    return out


class TestKafkaBackend:
    broker_name = "kafka"

    @pytest.fixture
    async def one_partition(self, broker: Broker) -> AsyncIterator[Any]:
        """A backend whose topics have one partition: offsets are 0, 1, 2 ... in send order."""
        b = broker.make_backend(kafka_partitions=1)
        try:
            yield b
        finally:
            await b.close()

    async def _stream(self, b: Any, n: int, sub: str = "s") -> tuple[str, Any, list[Any]]:
        name = fresh("ack")
        c = await b.create_consumer(name, sub, Item, initial_position="earliest")
        p = await b.create_producer(name, Item)
        for i in range(n):
            await p.send(Item(i))
        await p.flush()
        msgs = await receive_n(c, n)
        assert [m.value().n for m in msgs] == list(range(n)), "one partition keeps send order"
        return name, c, msgs

    # -- the acked prefix ------------------------------------------------------

    async def test_out_of_order_ack_commits_only_the_prefix(self, broker: Broker, one_partition: Any) -> None:
        name, c, msgs = await self._stream(one_partition, 6)
        for m in msgs[:4]:
            await c.acknowledge(m)
        await c.acknowledge(msgs[5])  # 5 before 4
        await c.commit()
        assert await committed(broker, name, "s") == 4
        # The background committer must not move past 4 either.
        await asyncio.sleep(kb.COMMIT_INTERVAL * 3)
        assert await committed(broker, name, "s") == 4
        await c.acknowledge(msgs[4])
        # No explicit commit: the background round takes the prefix past 5.
        assert await committed_becomes(broker, name, "s", 6) == 6

    async def test_prefix_holds_with_concurrent_handlers(self, broker: Broker, one_partition: Any) -> None:
        n, held = 60, 17
        name = fresh("conc")
        c = await one_partition.create_consumer(name, "s", Item, initial_position="earliest")
        p = await one_partition.create_producer(name, Item)
        for i in range(n):
            await p.send(Item(i))
        await p.flush()
        kept: list[Any] = []
        seen: set[int] = set()

        async def worker() -> None:
            while len(seen) < n:
                try:
                    m = await c.receive(timeout=2.0)
                except PubSubTimeoutError:
                    continue
                seen.add(m.value().n)
                await asyncio.sleep(random.uniform(0, 0.02))  # finish in a shuffled order
                if m.value().n == held:
                    kept.append(m)
                else:
                    await c.acknowledge(m)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), 60)
        await c.commit()
        assert await committed(broker, name, "s") == held
        await c.acknowledge(kept[0])
        assert await committed_becomes(broker, name, "s", n) == n

    async def test_close_commits_the_prefix_and_the_rest_comes_again(self, broker: Broker, one_partition: Any) -> None:
        name, c, msgs = await self._stream(one_partition, 5)
        for i in (0, 1, 3):
            await c.acknowledge(msgs[i])
        await c.close()
        assert await committed(broker, name, "s") == 2
        again = await one_partition.create_consumer(name, "s", Item)
        got = {m.value().n for m in await receive_n(again, 3)}
        assert got == {2, 3, 4}  # 3 was acked but sits behind 2: at-least-once

    # -- nack ----------------------------------------------------------------

    async def test_nack_redelivers_only_the_nacked_message(self, broker: Broker, one_partition: Any) -> None:
        name, c, msgs = await self._stream(one_partition, 5)
        for i in (0, 1, 3, 4):
            await c.acknowledge(msgs[i])
        await c.negative_acknowledge(msgs[2])
        again = await c.receive(timeout=10)
        assert (again.value().n, again.redelivery_count) == (2, 1)
        await c.negative_acknowledge(again)
        third = await c.receive(timeout=10)
        assert (third.value().n, third.redelivery_count) == (2, 2)
        with pytest.raises(PubSubTimeoutError):
            await c.receive(timeout=1.0)  # 3 and 4 were acked: they do not come again
        await c.commit()
        assert await committed(broker, name, "s") == 2, "a nacked message is never committed past"
        await c.acknowledge(third)
        assert await committed_becomes(broker, name, "s", 5) == 5

    async def test_nacks_while_fetched_records_wait_lose_nothing(self, broker: Broker, one_partition: Any) -> None:
        """A nack seeks back past records already fetched and admitted but not handed out.

        They must come again as first deliveries; a redelivery admitted but
        not handed out when a second nack seeks back must come again too.
        """
        name, c, msgs = await self._stream(one_partition, 3)
        p = await one_partition.create_producer(name, Item)
        for i in range(3, 10):
            await p.send(Item(i))
        await p.flush()
        head = await c.receive(timeout=10)  # 3, and the fetch behind it waits (4-9)
        assert (head.value().n, head.redelivery_count) == (3, 0)
        await c.acknowledge(msgs[0])
        await c.negative_acknowledge(msgs[1])  # back to 1; 2 and 3 are still held
        got = [await c.receive(timeout=10)]
        assert (got[0].value().n, got[0].redelivery_count) == (1, 1)
        await c.negative_acknowledge(msgs[2])  # back to 2, past 4-9 admitted again
        got += await receive_n(c, 7, within=10)
        assert [(m.value().n, m.redelivery_count) for m in got] == [
            (1, 1), (2, 1), (4, 0), (5, 0), (6, 0), (7, 0), (8, 0), (9, 0)]
        with pytest.raises(PubSubTimeoutError):
            await c.receive(timeout=1.0)
        for m in [head, *got]:
            await c.acknowledge(m)
        assert await committed_becomes(broker, name, "s", 10) == 10

    async def test_a_nack_seeks_back_to_a_replay_not_yet_handed_out(
        self, broker: Broker, one_partition: Any
    ) -> None:
        """Two replays are fetched together; the first is handed out, the second waits.

        A nack of a later offset then seeks back to the waiting replay, not to
        the offset nacked: seeking there would skip the replay for good.
        """
        name, c, msgs = await self._stream(one_partition, 6)
        await c.negative_acknowledge(msgs[1])
        await c.negative_acknowledge(msgs[2])
        first = await c.receive(timeout=10)  # 1 again; 2's replay waits behind it
        assert (first.value().n, first.redelivery_count) == (1, 1)
        await c.negative_acknowledge(msgs[4])
        got = [first, *await receive_n(c, 2, within=10)]
        assert [(m.value().n, m.redelivery_count) for m in got] == [(1, 1), (2, 1), (4, 1)]
        with pytest.raises(PubSubTimeoutError):
            await c.receive(timeout=1.0)
        for m in [msgs[0], msgs[3], msgs[5], *got]:
            await c.acknowledge(m)
        assert await committed_becomes(broker, name, "s", 6) == 6

    async def test_nack_then_close_leaves_it_for_the_next_consumer(self, broker: Broker, one_partition: Any) -> None:
        name, c, msgs = await self._stream(one_partition, 3)
        await c.acknowledge(msgs[0])
        await c.negative_acknowledge(msgs[1])
        await c.acknowledge(msgs[2])
        await c.close()
        again = await one_partition.create_consumer(name, "s", Item)
        first = await again.receive(timeout=30)
        assert first.value().n == 1

    # -- joining ---------------------------------------------------------------

    async def test_a_settle_that_fails_after_assignment_is_tried_again(
        self, backend: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Where a partition starts is settled (and committed) after assignment; a
        failure there (seen in the storm: the topic deleted and made again under a
        live member) is retried, not left until the join timeout."""
        position = AIOKafkaConsumer.position
        failures = {"left": 2}

        async def failing(self: Any, tp: Any) -> int:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise kerr.UnknownTopicOrPartitionError("made up")
            return await position(self, tp)

        name = fresh("settle")
        await backend.create_queue(name, "grp")
        p = await backend.create_producer(name, Item)
        monkeypatch.setattr(AIOKafkaConsumer, "position", failing)
        c = await backend.create_consumer(name, "other", Item)
        monkeypatch.undo()
        assert failures["left"] == 0
        assert "settling positions of" in caplog.text
        assert await backend.queue_exists(name, "other")
        await p.send(Item(7))
        await p.flush()
        assert (await c.receive(timeout=30)).value().n == 7
        await c.close()

    async def test_the_session_timeout_reaches_the_group_member(self, broker: Broker) -> None:
        """``--kafka-session-timeout-ms`` is what the member joins with (and what
        its request timeout stays above); it consumes as at the default."""
        backend = broker.make_backend(kafka_session_timeout_ms=9000)
        try:
            name = fresh("session")
            c = await backend.create_consumer(name, "grp", Item)
            client = c._client  # the member's aiokafka consumer
            assert client._session_timeout_ms == 9000
            assert client._client._request_timeout_ms >= 9000 + ANSWER_MARGIN_MS
            p = await backend.create_producer(name, Item)
            await p.send(Item(3))
            await p.flush()
            m = await c.receive(timeout=30)
            assert m.value().n == 3
            await c.acknowledge(m)
        finally:
            await backend.close()

    async def test_latest_consumer_gets_what_is_sent_after_it_returns(self, backend: Any) -> None:
        name = fresh("latest")
        p = await backend.create_producer(name, Item)
        await p.send(Item(-1))
        await p.flush()
        consumers = [await backend.create_consumer(name, "grp", Item) for _ in range(3)]
        n = 300
        for i in range(n):
            await p.send(Item(i))
        await p.flush()
        per: list[list[int]] = [[] for _ in consumers]

        async def drain(k: int) -> None:
            while True:
                try:
                    m = await consumers[k].receive(timeout=3.0)
                except PubSubTimeoutError:
                    return
                per[k].append(m.value().n)
                await consumers[k].acknowledge(m)

        await asyncio.gather(*(drain(k) for k in range(3)))
        everything = [v for got in per for v in got]
        assert sorted(everything) == list(range(n)), "lost, duplicated or old (-1) messages"
        assert all(per), f"3 consumers did not split the load: {[len(g) for g in per]}"

    @pytest.mark.parametrize("how", ["latest", "create_queue"])
    async def test_a_new_subscription_starts_at_the_true_end(self, backend: Any, how: str) -> None:
        """Nothing written before the subscription, even inside one record batch.

        tansu answers ListOffsets(latest) with one past the first offset of the
        last batch; the backend corrects the start to the fetch high watermark.
        """
        name = fresh("end")
        p = await backend.create_producer(name, Item)
        for i in range(200):  # sent without waiting: they travel in a few batches
            await p.send(Item(-1 - i))
        await p.flush()
        if how == "create_queue":
            await backend.create_queue(name, "s")
            c = await backend.create_consumer(name, "s", Item)
        else:
            c = await backend.create_consumer(name, "s", Item, initial_position="latest")
        await p.send(Item(1))
        await p.flush()
        got = []
        while True:
            try:
                m = await c.receive(timeout=2.0)
            except PubSubTimeoutError:
                break
            got.append(m.value().n)
            await c.acknowledge(m)
        assert got == [1], f"old messages came to a new subscription: {got[:20]}"

    async def test_request_reply_round_trip_is_fast(self, backend: Any) -> None:
        """tansu does not wake a waiting fetch: fetch_max_wait_ms bounds the round trip."""
        req, resp = fresh("req"), fresh("resp")
        server_in = await backend.create_consumer(req, "svc", Item)
        client_in = await backend.create_consumer(resp, "caller", Item)
        to_server = await backend.create_producer(req, Item, latency_bound=True)
        to_client = await backend.create_producer(resp, Item, latency_bound=True)

        async def serve() -> None:
            while True:
                m = await server_in.receive()
                await server_in.acknowledge(m)
                await to_client.send(m.value())

        task = asyncio.create_task(serve())
        try:
            rtts = []
            for i in range(30):
                t0 = time.perf_counter()
                await to_server.send(Item(i))
                m = await client_in.receive(timeout=10)
                rtts.append(time.perf_counter() - t0)
                assert m.value().n == i
                await client_in.acknowledge(m)
        finally:
            task.cancel()
        p50 = statistics.median(rtts[5:])
        assert p50 < 0.060, f"round trip p50 {p50 * 1000:.1f} ms: is fetch_max_wait_ms applied?"

    # -- lifecycle -------------------------------------------------------------

    async def test_queue_lifecycle(self, broker: Broker, backend: Any) -> None:
        name = fresh("life")
        assert not await backend.queue_exists(name, "a")
        await backend.create_queue(name, "a")
        await backend.create_queue(name, "a")  # TopicAlreadyExists is not an error
        await backend.ensure_queue(name, "a")
        assert await backend.queue_exists(name, "a")
        assert not await backend.queue_exists(name, "b"), "a group with no offsets is no subscription"
        # The subscription keeps what is published before anyone consumes it.
        p = await backend.create_producer(name, Item)
        await p.send(Item(7))
        await p.flush()
        c = await backend.create_consumer(name, "a", Item)  # latest, yet it gets 7
        m = await c.receive(timeout=30)
        assert m.value().n == 7
        await c.acknowledge(m)
        await c.close()
        await backend.delete_queue(name, "a")
        assert not await backend.queue_exists(name, "a")
        await backend.create_queue(name, "b")
        await backend.delete_queue(name)
        assert not await backend.queue_exists(name, "b")
        assert not await backend._topic_exists(naming.kafka_topic(name))
        await backend.delete_queue(name)  # UnknownTopicOrPartition is not an error
        await backend.delete_queue(name, "a")  # nor a group that is gone

    async def test_topic_is_created_with_the_configured_partitions(self, broker: Broker) -> None:
        b = broker.make_backend(kafka_partitions=3)
        try:
            name = fresh("parts")
            await b.create_producer(name, Item)
            meta = await b._metadata(naming.kafka_topic(name))
            assert meta is not None and len(meta["partitions"]) == 3
        finally:
            await b.close()

    # -- producing -------------------------------------------------------------

    async def test_q2_needs_an_idempotent_producer(self, broker: Broker, backend: Any) -> None:
        name = fresh("q2", qos="q2")
        if NO_IDEMPOTENT_PRODUCER in broker.quirks:
            with pytest.raises(UnsupportedError) as err:
                await backend.create_producer(name, Item)
            assert "idempotent" in str(err.value) and "q1" in str(err.value)
            return
        c = await backend.create_consumer(name, "s", Item)
        p = await backend.create_producer(name, Item)
        await p.send(Item(1))
        assert (await c.receive(timeout=30)).value().n == 1

    async def test_message_size(self, broker: Broker) -> None:
        b = broker.make_backend(kafka_max_message_size=2 * 1024 * 1024)
        try:
            name = fresh("size")
            c = await b.create_consumer(name, "s", None)
            p = await b.create_producer(name, None)
            big = bytes(range(256)) * (1024 * 1024 // 256 * 2)
            await p.send(big, {"k": "v"})
            await p.flush()
            m = await c.receive(timeout=30)
            assert m.data() == big and m.properties() == {"k": "v"}
            with pytest.raises(MessageTooLargeError) as err:
                await p.send(big + b"x")
            assert name in str(err.value) and "--kafka-max-message-size" in str(err.value)
        finally:
            await b.close()

    async def test_sends_stay_in_flight_until_flush(self, backend: Any) -> None:
        name = fresh("inflight")
        c = await backend.create_consumer(name, "s", Item)
        p = await backend.create_producer(name, Item)
        n = 2000
        for i in range(n):
            await p.send(Item(i))
        assert p._pending, "every send waited for its delivery report"
        await p.flush()
        assert not p._pending
        got = {m.value().n for m in await receive_n(c, n)}
        assert got == set(range(n))

    # -- bad input -------------------------------------------------------------

    async def test_bad_names_and_arguments(self, backend: Any) -> None:
        long_queue = "q" * 250
        with pytest.raises(BadTopicError) as err:
            await backend.create_producer(make_topic(long_queue), Item)
        assert "249" in str(err.value) and long_queue in str(err.value)
        for bad in ("tg/flow/x", "q1/tg/flow/a b", 42):
            with pytest.raises(BadTopicError):
                await backend.create_producer(bad, Item)
        with pytest.raises(BadTopicError) as err:
            await backend.create_consumer(fresh("x"), "a/b", Item)
        assert "subscription" in str(err.value)
        name = fresh("args")
        with pytest.raises(ConfigurationError) as err:
            await backend.create_producer(name, int)
        assert "dataclass" in str(err.value)
        with pytest.raises(ConfigurationError) as err:
            await backend.create_consumer(name, "s", Item, initial_position="middle")
        assert "initial_position" in str(err.value)
        with pytest.raises(UnsupportedError) as err:
            await backend.create_consumer(name, "s", Item, consumer_type="exclusive")
        assert "shared" in str(err.value)
        p = await backend.create_producer(name, Item)
        with pytest.raises(TypeError):
            await p.send("not an Item")
        with pytest.raises(TypeError):
            await p.send(Item(1), {"k": 1})

    @pytest.mark.parametrize(
        ("overrides", "says"),
        [
            ({"kafka_security_protocol": "SASL_PLAIN"}, "--kafka-security-protocol"),
            ({"kafka_fetch_max_wait_ms": 0}, "--kafka-fetch-max-wait-ms"),
            ({"kafka_bootstrap_servers": "host:port"}, "--kafka-bootstrap-servers"),
            ({"kafka_partitions": 0}, "--kafka-partitions"),
            ({"kafka_session_timeout_ms": 1000}, "--kafka-session-timeout-ms"),
            ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "--kafka-sasl-username"),
            ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "MD5",
              "kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "--kafka-sasl-mechanism"),
        ],
    )
    async def test_bad_options(self, broker: Broker, overrides: dict[str, Any], says: str) -> None:
        with pytest.raises(ConfigurationError) as err:
            broker.make_backend(**overrides)
        assert says in str(err.value)

    async def test_refused_connection_is_reported_fast(self, broker: Broker) -> None:
        overrides = broker.refused_config()
        b = broker.make_backend(**overrides)
        t0 = time.monotonic()
        try:
            with pytest.raises(BrokerConnectionError) as err:
                await b.create_consumer(fresh("refused"), "s", Item)
        finally:
            await b.close()
        assert time.monotonic() - t0 < 12
        assert overrides["kafka_bootstrap_servers"] in str(err.value)

    async def test_wrong_credentials(self, broker: Broker) -> None:
        overrides = broker.bad_credentials_config()
        if overrides is None:
            pytest.skip("the kafka fixture has no broker that checks credentials")
        b = broker.make_backend(**overrides)
        try:
            with pytest.raises(AuthenticationError) as err:
                await b.create_producer(fresh("auth"), Item)
            text = f"{err.value} {err.value!r} {b!r}"
        finally:
            await b.close()
        assert "credentials" in text and overrides["kafka_sasl_username"] in text
        assert overrides["kafka_sasl_password"] not in text
