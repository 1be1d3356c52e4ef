"""The MQTT backend against a real Mosquitto (the private instance of tests/brokers/mqtt.py).

What the conformance battery does not look at closely: durable sessions per
slot (slot 0 keeps its backlog, higher slots hand theirs back and end their
session), local nack with its count, takeover of a slot by another client,
the producer surviving a broker restart (including Mosquitto forgetting
shared subscriptions), user properties on the wire, and the errors a person
gets for bad input.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.brokers import Broker
from trustgraph_pubsub import (
    AuthenticationError,
    BadTopicError,
    BrokerConnectionError,
    ClosedError,
    ConfigurationError,
    ConnectionLostError,
    MessageTooLargeError,
    PubSubTimeoutError,
    UnsupportedError,
    get_pubsub,
    naming,
)
from trustgraph_pubsub.backends import mqtt as mb
from trustgraph_pubsub.consumer import Consumer
from trustgraph_pubsub.producer import Producer
from trustgraph_pubsub.retry import Backoff
from trustgraph_schema.topic import topic as make_topic


@dataclass
class Item:
    n: int
    text: str = ""


def fresh(label: str, qos: str = "q1") -> str:
    return make_topic(f"mt-{uuid.uuid4().hex[:10]}-{label}", qos=qos, tenant="tg", namespace="mqtttest")


async def drain(consumer: Any, within: float = 1.0, *, ack: bool = True) -> list[Any]:
    """Everything that arrives until ``within`` seconds pass with nothing."""
    out = []
    while True:
        try:
            msg = await consumer.receive(timeout=within)
        except PubSubTimeoutError:
            return out
        out.append(msg)
        if ack:
            await consumer.acknowledge(msg)


async def take(consumer: Any, n: int, within: float = 30.0, *, ack: bool = True) -> list[Any]:
    out = []
    deadline = time.monotonic() + within
    while len(out) < n:
        msg = await consumer.receive(timeout=max(0.1, deadline - time.monotonic()))
        out.append(msg)
        if ack:
            await consumer.acknowledge(msg)
    return out


def session_present(broker: Broker, client_id: str) -> bool:
    """Whether the broker holds a session for ``client_id`` (ends a session it had to create).

    Blocking; run it with ``asyncio.to_thread``.
    """
    answer: list[bool] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        answer.append(bool(flags.session_present))
        done.set()

    c.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 60
    cfg = broker.backend_config()
    c.connect(cfg["mqtt_host"], cfg["mqtt_port"], clean_start=False, properties=props)
    c.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
        if not answer[0]:
            end = Properties(PacketTypes.DISCONNECT)
            end.SessionExpiryInterval = 0
            c.disconnect(properties=end)
        else:
            c.disconnect()
        time.sleep(0.1)
    finally:
        c.loop_stop()
    return answer[0]


def drop_connection(link: Any) -> None:
    """Cut a backend client's TCP connection under it, as a network failure would."""
    link._sock.shutdown(socket.SHUT_RDWR)


def publish_raw(broker: Broker, topic: str, payload: bytes, props: dict[str, str]) -> None:
    """One QoS 1 publish through plain paho (user properties the backend would refuse).

    Blocking; run it with ``asyncio.to_thread``.
    """
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    c.on_publish = lambda *_a: done.set()
    cfg = broker.backend_config()
    c.connect(cfg["mqtt_host"], cfg["mqtt_port"])
    c.loop_start()
    try:
        pp = Properties(PacketTypes.PUBLISH)
        for k, v in props.items():
            pp.UserProperty = (k, v)
        c.publish(topic, payload, 1, properties=pp)
        assert done.wait(10), "no PUBACK"
        c.disconnect()
    finally:
        c.loop_stop()


class TestMQTTBackend:
    broker_name = "mqtt"

    # -- messages ------------------------------------------------------------------

    @pytest.mark.parametrize("qos", ["q0", "q1", "q2"])
    async def test_round_trip_each_qos(self, backend: Any, qos: str) -> None:
        name = fresh("rt", qos)
        c = await backend.create_consumer(name, "s", Item)
        p = await backend.create_producer(name, Item)
        props = {"trace": "t-1", "unicode": "héllo ✓ 漢字", "empty": ""}
        for i in range(20):
            await p.send(Item(i, "x" * i), props)
        await p.flush()
        got = await take(c, 20)
        assert [m.value() for m in got] == [Item(i, "x" * i) for i in range(20)]
        assert all(m.properties() == props for m in got)
        assert all(m.topic == name and m.redelivery_count == 0 for m in got)
        await c.unsubscribe()

    async def test_user_properties_pack_like_paho(self) -> None:
        pairs = {"a": "1", "ünï": "çødé ✓", "": "", "k" * 300: "v" * 1000}
        ours = mb._user_properties(pairs, "q1/t/n/q")
        assert ours is not None
        theirs = Properties(PacketTypes.PUBLISH)
        for k, v in pairs.items():
            theirs.UserProperty = (k, v)
        assert ours.pack() == theirs.pack()
        assert mb._user_properties({}, "q1/t/n/q") is None

    async def test_bad_properties_are_refused_before_the_wire(self, backend: Any) -> None:
        name = fresh("props")
        c = await backend.create_consumer(name, "s", Item)
        p = await backend.create_producer(name, Item)
        with pytest.raises(ConfigurationError) as err:
            await p.send(Item(1), {"bad": "a\x00b"})
        assert "NUL" in str(err.value) and name in str(err.value)
        with pytest.raises(ConfigurationError) as err:
            await p.send(Item(2), {mb.REDELIVERY_PROPERTY: "3"})
        assert mb.REDELIVERY_PROPERTY in str(err.value) and "reserved" in str(err.value)
        with pytest.raises(ConfigurationError):
            await p.send(Item(3), {"big": "x" * 70_000})
        with pytest.raises(TypeError):
            await p.send(Item(4), {"n": 4})  # type: ignore[dict-item]
        # Nothing reached the broker, so the connection is still fine.
        await p.send(Item(5), {"ok": "yes"})
        await p.flush()
        (m,) = await take(c, 1)
        assert m.value() == Item(5) and m.properties() == {"ok": "yes"}
        await c.unsubscribe()

    async def test_large_message(self, backend: Any) -> None:
        name = fresh("big")
        c = await backend.create_consumer(name, "s", None)
        p = await backend.create_producer(name, None)
        blob = bytes(range(256)) * (16 * 1024 * 1024 // 256)
        await p.send(blob, {"size": str(len(blob))})
        await p.flush()
        (m,) = await take(c, 1, 60)
        assert m.data() == blob and m.value() == blob
        await c.unsubscribe()
        assert backend.capabilities.max_message_size > len(blob)
        with pytest.raises(MessageTooLargeError):
            await p.send(b"x" * (backend.capabilities.max_message_size + 1))

    async def test_q2_send_waits_for_the_broker(self, backend: Any) -> None:
        name = fresh("q2", "q2")
        c = await backend.create_consumer(name, "s", Item)
        p = await backend.create_producer(name, Item)
        for i in range(50):
            await p.send(Item(i))
            assert p._outstanding == 0, "a q2 send returned before PUBCOMP"
        got = await take(c, 50)
        assert sorted(m.value().n for m in got) == list(range(50))
        await c.unsubscribe()

    # -- nack and acks --------------------------------------------------------------

    async def test_nack_redelivers_with_count_and_ack_is_final(self, backend: Any) -> None:
        name, sub = fresh("nack"), "s"
        c = await backend.create_consumer(name, sub, Item)
        p = await backend.create_producer(name, Item)
        for i in range(5):
            await p.send(Item(i), {"i": str(i)})
        await p.flush()
        counts: Counter[int] = Counter()
        seen: dict[int, list[int]] = {}
        while len([n for n, k in counts.items() if k == 3]) < 5:
            m = await c.receive(timeout=10)
            n = m.value().n
            counts[n] += 1
            seen.setdefault(n, []).append(m.redelivery_count)
            assert m.properties() == {"i": str(n)}
            if counts[n] < 3:
                await c.negative_acknowledge(m)
            else:
                await c.acknowledge(m)
                await c.acknowledge(m)  # again: a no-op
        assert all(v == [0, 1, 2] for v in seen.values()), seen
        await c.close()
        # Every message was acked: the session keeps nothing for the next consumer.
        again = await backend.create_consumer(name, sub, Item)
        assert await drain(again, 1.0) == []
        await again.unsubscribe()

    async def test_nack_count_survives_a_lost_connection_and_a_reopen(self, backend: Any) -> None:
        """A message nacked every time must reach the dead-letter limit even when the
        connection drops or the consumer reopens between nacks: the count travels with
        the message, not in one connection's memory."""
        name, sub = fresh("nackkeep"), "s"
        c = await backend.create_consumer(name, sub, Item)
        p = await backend.create_producer(name, Item)
        await p.send(Item(1), {"k": "v"})
        await p.flush()
        for expected in (0, 1, 2):
            m = await c.receive(timeout=10)
            assert m.redelivery_count == expected
            if expected < 2:
                await c.negative_acknowledge(m)
        drop_connection(c._link)  # the handler is still busy with the third delivery
        with pytest.raises(ConnectionLostError):
            await c.receive(timeout=10)
        await c.close()
        c = await backend.create_consumer(name, sub, Item)
        m = await c.receive(timeout=10)
        assert m.value() == Item(1) and m.properties() == {"k": "v"}
        assert m.redelivery_count >= 2, "the count restarted after a lost connection"
        await c.negative_acknowledge(m)
        before = m.redelivery_count
        await c.close()  # slot 0: the session keeps the message for the next consumer
        c = await backend.create_consumer(name, sub, Item)
        (m,) = await take(c, 1)
        assert m.redelivery_count >= before + 1, "the count restarted after a reopen"
        assert await drain(c, 1.0) == [], "a nacked message was delivered twice"
        await c.unsubscribe()

    async def test_malformed_redelivery_property_is_logged(
        self, broker: Broker, backend: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        name, sub = fresh("badcount"), "s"
        c = await backend.create_consumer(name, sub, None)
        await asyncio.to_thread(
            publish_raw, broker, naming.mqtt_topic(name), b"x", {mb.REDELIVERY_PROPERTY: "many"}
        )
        with caplog.at_level(logging.WARNING, logger=mb.__name__):
            (m,) = await take(c, 1)
        assert m.redelivery_count == 0 and m.properties() == {}
        assert any(mb.REDELIVERY_PROPERTY in r.getMessage() and "'many'" in r.getMessage()
                   for r in caplog.records), caplog.text
        await c.unsubscribe()

    async def test_acks_before_close_reach_the_broker(self, backend: Any) -> None:
        """A burst of acks is written before the DISCONNECT that follows it at once."""
        name, sub = fresh("acks"), "s"
        c = await backend.create_consumer(name, sub, Item, prefetch=500)
        p = await backend.create_producer(name, Item)
        for i in range(300):
            await p.send(Item(i))
        await p.flush()
        for m in await take(c, 300, ack=False):
            await c.acknowledge(m)
        await c.close()
        again = await backend.create_consumer(name, sub, Item)
        assert await drain(again, 1.0) == []
        await again.unsubscribe()

    async def test_settling_a_foreign_message_is_refused(self, backend: Any) -> None:
        name = fresh("foreign")
        a = await backend.create_consumer(name, "a", Item)
        b = await backend.create_consumer(name, "b", Item)
        p = await backend.create_producer(name, Item)
        await p.send(Item(1))
        await p.flush()
        (ma,) = await take(a, 1, ack=False)
        with pytest.raises(ConfigurationError):
            await b.acknowledge(ma)
        await a.acknowledge(ma)
        await drain(b)
        await a.unsubscribe()
        await b.unsubscribe()

    # -- durable sessions -----------------------------------------------------------

    async def test_slot_zero_keeps_the_backlog_while_nobody_consumes(
        self, broker: Broker, backend: Any
    ) -> None:
        name, sub = fresh("away"), "s"
        c = await backend.create_consumer(name, sub, Item)
        assert c.slot == 0
        await c.close()
        p = await backend.create_producer(name, Item)
        for i in range(50):
            await p.send(Item(i))
        await p.flush()
        assert await backend.queue_exists(name, sub)
        c = await backend.create_consumer(name, sub, Item)
        got = await take(c, 50)
        assert sorted(m.value().n for m in got) == list(range(50))
        await c.unsubscribe()
        assert not await asyncio.to_thread(
            session_present, broker, naming.mqtt_client_id(name, sub, 0)
        ), "unsubscribe left the session behind"

    async def test_higher_slot_hands_everything_back_on_close(
        self, broker: Broker, backend: Any
    ) -> None:
        """Slot 1 closes holding unacked messages and a session queue beyond its
        Receive Maximum: slot 0 gets every message, and slot 1's session is gone."""
        n = 300
        name, sub = fresh("handback"), "s"
        first = await backend.create_consumer(name, sub, Item, prefetch=5)
        second = await backend.create_consumer(name, sub, Item, prefetch=5)
        assert (first.slot, second.slot) == (0, 1)
        p = await backend.create_producer(name, Item)
        for i in range(n):
            await p.send(Item(i))
        await p.flush()
        held = await take(second, 5, ack=False)  # its window is full, the rest queue in its session
        # The nack's copy may go to either consumer; its original's PUBACK frees second's
        # window, so the session sends more: prefetched, never received.
        await second.negative_acknowledge(held[0])
        deadline = time.monotonic() + 10
        while not second._buffer and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert second._buffer, "second prefetched nothing after the nack"
        await second.close()
        with pytest.raises(ClosedError):
            await second.receive(timeout=0.1)
        seen: Counter[int] = Counter()
        counts: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while len(seen) < n and time.monotonic() < deadline:
            try:
                m = await first.receive(timeout=2)
            except PubSubTimeoutError:
                continue
            seen[m.value().n] += 1
            counts[m.value().n] = m.redelivery_count
            await first.acknowledge(m)
        assert set(seen) == set(range(n)), f"missing {sorted(set(range(n)) - set(seen))[:20]}"
        held_n = {m.value().n for m in held}
        # Received once before (the nacked one too, whichever consumer its copy reached):
        # exactly one earlier delivery; prefetched-only and never-sent messages: none.
        assert {i: counts[i] for i in held_n} == dict.fromkeys(held_n, 1), counts
        assert {i for i, k in counts.items() if k} == held_n, (
            "a message the application never received counted as redelivered"
        )
        assert not await asyncio.to_thread(
            session_present, broker, naming.mqtt_client_id(name, sub, 1)
        ), "slot 1's session survived its close"
        await first.unsubscribe()

    async def test_concurrent_closes_then_one_consumer_gets_all(self, backend: Any) -> None:
        n = 200
        name, sub = fresh("closes"), "s"
        consumers = [await backend.create_consumer(name, sub, Item, prefetch=20) for _ in range(3)]
        assert sorted(c.slot for c in consumers) == [0, 1, 2]
        p = await backend.create_producer(name, Item)
        for i in range(n):
            await p.send(Item(i))
        await p.flush()
        acked: set[int] = set()
        for c in consumers:
            for k, m in enumerate(await take(c, 10, ack=False)):
                if k % 3 == 0:
                    await c.acknowledge(m)
                    acked.add(m.value().n)
        await asyncio.gather(*(c.close() for c in consumers))
        last = await backend.create_consumer(name, sub, Item, prefetch=50)
        got = {m.value().n for m in await drain(last, 3.0)}
        assert set(range(n)) - acked <= got, f"lost {sorted(set(range(n)) - acked - got)[:20]}"
        await last.unsubscribe()

    async def test_q0_sessions_do_not_outlive_their_consumer(self, backend: Any) -> None:
        name, sub = fresh("q0", "q0"), "s"
        c = await backend.create_consumer(name, sub, Item)
        assert c.slot is None
        await c.close()
        p = await backend.create_producer(name, Item)
        await p.send(Item(1))
        await p.flush()
        c = await backend.create_consumer(name, sub, Item)
        assert await drain(c, 0.5) == []
        await p.send(Item(2))
        await p.flush()
        assert [m.value().n for m in await drain(c, 1.0)] == [2]
        await c.close()

    async def test_queue_calls_manage_the_anchor_session(self, backend: Any) -> None:
        name, sub = fresh("queue"), "s"
        assert not await backend.queue_exists(name, sub)
        await backend.create_queue(name, sub)
        await backend.ensure_queue(name, sub)
        assert await backend.queue_exists(name, sub)
        p = await backend.create_producer(name, Item)
        await p.send(Item(7))
        await p.flush()
        c = await backend.create_consumer(name, sub, Item)
        assert [m.value().n for m in await take(c, 1)] == [7]
        await c.close()
        await p.send(Item(8))
        await p.flush()
        await backend.delete_queue(name, sub)
        assert not await backend.queue_exists(name, sub)
        c = await backend.create_consumer(name, sub, Item)
        assert await drain(c, 0.5) == [], "the deleted subscription's backlog came back"
        await c.close()
        await backend.delete_queue(name)
        assert not await backend.queue_exists(name, sub)

    async def test_takeover_by_another_client(self, broker: Broker, backend: Any) -> None:
        name, sub = fresh("takeover"), "s"
        c = await backend.create_consumer(name, sub, Item)
        client_id = naming.mqtt_client_id(name, sub, 0)
        for round_ in (1, 2, 3):
            await asyncio.to_thread(session_present, broker, client_id)
            with pytest.raises(ConnectionLostError) as err:
                await c.receive(timeout=10)
            assert "slot 0" in str(err.value), str(err.value)
            await c.close()
            c = await backend.create_consumer(name, sub, Item)
            # Lost once or twice: back on the same slot.  Three times within a minute:
            # another process wants it (Mosquitto does not say "taken over").
            assert c.slot == (0 if round_ < 3 else 1)
        await c.unsubscribe()

    async def test_a_slot_is_released_once(self, backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """A connection lost while subscribing releases the slot, and so does the failed
        open after it; another consumer that took the slot in between must keep it."""
        name, sub = fresh("release"), "s"
        key = backend._key(name, sub)
        real_subscribe = mb._Link.subscribe
        taken: list[int] = []

        async def lost_while_subscribing(self: Any, filters: Any) -> Any:
            monkeypatch.setattr(mb._Link, "subscribe", real_subscribe)
            self.broken(OSError("test: connection reset"))
            taken.append(mb._SLOTS.acquire(key))  # another consumer, in the gap
            return await real_subscribe(self, filters)

        monkeypatch.setattr(mb._Link, "subscribe", lost_while_subscribing)
        with pytest.raises(ConnectionLostError):
            await backend.create_consumer(name, sub, Item)
        try:
            assert taken == [0]
            assert 0 in mb._SLOTS.held(key), "the failed consumer released a slot it no longer held"
            c = await backend.create_consumer(name, sub, Item)
            assert c.slot == 1
            await c.close()
        finally:
            mb._SLOTS.release(key, 0)
        await backend.delete_queue(name, sub)

    # -- bad input and configuration ----------------------------------------------

    async def test_bad_names_and_options(self, backend: Any) -> None:
        name = fresh("names")
        with pytest.raises(BadTopicError) as err:
            await backend.create_consumer(name, "a/b", Item)
        assert "subscription" in str(err.value)
        with pytest.raises(BadTopicError):
            await backend.create_producer("q1/tg/x/a+b", Item)
        with pytest.raises(UnsupportedError) as uerr:
            await backend.create_consumer(name, "s", Item, consumer_type="exclusive")
        assert "shared" in str(uerr.value)
        with pytest.raises(ConfigurationError) as cerr:
            await backend.create_consumer(name, "s", Item, prefetch=0)
        assert "prefetch" in str(cerr.value)
        for key, value, says in (
            ("mqtt_port", 70000, "--mqtt-port"),
            ("mqtt_session_expiry", -1, "--mqtt-session-expiry"),
            ("mqtt_max_inflight", 0, "--mqtt-max-inflight"),
        ):
            with pytest.raises(ConfigurationError) as cerr:
                get_pubsub(pubsub_backend="mqtt", **{key: value})
            assert says in str(cerr.value)
        with pytest.raises(ConfigurationError):
            get_pubsub(pubsub_backend="mqtt", mqtt_password="secret-only")

    async def test_refused_connection_is_fast_and_named(self, broker: Broker) -> None:
        overrides = broker.refused_config()
        b = broker.make_backend(**overrides)
        try:
            t0 = time.monotonic()
            with pytest.raises(BrokerConnectionError) as err:
                await b.create_consumer(fresh("refused"), "s", Item)
            assert time.monotonic() - t0 < 5
            assert f":{overrides['mqtt_port']}" in str(err.value)
            assert "refused" in str(err.value)
        finally:
            await b.close()

    async def test_bad_credentials_never_show_the_password(self, broker: Broker) -> None:
        overrides = broker.bad_credentials_config()
        if overrides is None:
            pytest.skip(getattr(broker, "no_credential_check", None) or "no credential check")
        secret = overrides["mqtt_password"]
        b = broker.make_backend(**overrides)
        try:
            for create in (lambda: b.create_producer(fresh("auth"), Item),
                           lambda: b.create_consumer(fresh("auth"), "s", Item)):
                with pytest.raises(AuthenticationError) as err:
                    await create()
                for text in (str(err.value), repr(err.value), repr(b)):
                    assert secret not in text
                assert "credentials" in str(err.value) and overrides["mqtt_username"] in str(err.value)
        finally:
            await b.close()

    async def test_credentials_refused_on_reconnect_end_the_reconnecting(self, broker: Broker) -> None:
        """Credentials the broker stops accepting are not retried forever in the
        background: send and create_producer raise AuthenticationError."""
        good = getattr(broker, "credentials_config", lambda: None)()
        if good is None:
            pytest.skip(getattr(broker, "no_credential_check", None) or "no credential check")
        b = broker.make_backend(**good)
        new = "changed-" + uuid.uuid4().hex
        try:
            name = fresh("reauth")
            p = await b.create_producer(name, Item)
            await p.send(Item(1))
            await p.flush()
            await asyncio.to_thread(broker.set_password, new)  # type: ignore[attr-defined]
            probe = broker.make_backend(**good)
            try:
                deadline = time.monotonic() + 10
                while True:  # wait until the broker reloaded its password file
                    try:
                        await probe.create_producer(name, Item)
                    except AuthenticationError:
                        break
                    assert time.monotonic() < deadline, "the broker kept the old password"
                    await probe.close()
                    probe = broker.make_backend(**good)
                    await asyncio.sleep(0.1)
            finally:
                await probe.close()
            publisher = b.publisher
            if publisher.link.connected:
                # Mosquitto 2.0 disconnects clients whose password no longer holds on
                # the reload itself; otherwise cut the connection here.
                drop_connection(publisher.link)
            deadline = time.monotonic() + 10
            while True:
                try:
                    await p.send(Item(2))
                except ConnectionLostError:  # reconnecting: wait for its verdict
                    assert time.monotonic() < deadline, "send never said the credentials are refused"
                    await asyncio.sleep(0.05)
                    continue
                except AuthenticationError as exc:
                    err = exc
                    break
                pytest.fail("send succeeded with credentials the broker refuses")
            assert publisher._reconnecting is None, "the backend still retries refused credentials"
            t0 = time.monotonic()
            with pytest.raises(AuthenticationError):
                await b.create_producer(name, Item)
            assert time.monotonic() - t0 < b.connect_timeout / 2
            for text in (str(err), repr(err), repr(b)):
                assert good["mqtt_password"] not in text and new not in text
        finally:
            await b.close()

    async def test_closed_backend(self, broker: Broker) -> None:
        b = broker.make_backend()
        name = fresh("closed")
        c = await b.create_consumer(name, "s", Item)
        p = await b.create_producer(name, Item)
        await b.close()
        with pytest.raises(ClosedError):
            await c.receive(timeout=1)
        with pytest.raises(ClosedError):
            await p.send(Item(1))
        with pytest.raises(ClosedError):
            await b.create_producer(name, Item)

    # -- broker restart ----------------------------------------------------------------

    @pytest.mark.slow
    @pytest.mark.parametrize("qos", ["q1", "q2"])
    async def test_restart_with_a_late_consumer(self, broker: Broker, backend: Any, qos: str) -> None:
        """After a restart Mosquitto has forgotten shared subscriptions: messages sent
        before the consumer resubscribes are published again until it does.

        For q2 Mosquitto answers PUBREC "Success" whether or not anyone subscribes
        (it routes on PUBREL), so only a QoS 1 publish in the window can tell."""
        if not broker.can_restart:
            pytest.skip("the mqtt fixture reaches an external broker it cannot restart")
        name, sub = fresh("restart", qos), "s"
        c = await backend.create_consumer(name, sub, Item)
        p = Producer(backend, name, Item, send_deadline=60, backoff=Backoff(0.05, 1.0))
        await p.start()
        for i in range(20):
            await p.send(Item(i))
        await p.flush()
        await broker.restart()
        with pytest.raises(ConnectionLostError):
            await c.receive(timeout=10)
        await c.close()

        async def late() -> None:
            for i in range(20, 60):
                await p.send(Item(i))  # the consumer is not back yet

        # A q2 send returns only once a subscriber took the message: run them aside.
        sending = asyncio.create_task(late())
        await asyncio.sleep(1.0)
        c = await backend.create_consumer(name, sub, Item)
        await asyncio.wait_for(sending, 60)
        await p.flush()
        got = {m.value().n for m in await drain(c, 3.0)}
        assert set(range(60)) <= got, f"lost {sorted(set(range(60)) - got)}"
        await p.close()
        await c.unsubscribe()

    @pytest.mark.slow
    async def test_consumer_resumes_its_session_after_restart(
        self, broker: Broker, backend: Any
    ) -> None:
        """A running Consumer gets every message sent before the restart, in flight or not."""
        if not broker.can_restart:
            pytest.skip("the mqtt fixture reaches an external broker it cannot restart")
        name, sub = fresh("resume"), "s"
        received: set[int] = set()

        async def handler(msg: Any) -> None:
            received.add(msg.value().n)

        consumer = Consumer(backend, name, sub, Item, handler, concurrency=4,
                            backoff=Backoff(0.05, 1.0))
        await consumer.start()
        p = await backend.create_producer(name, Item)
        for i in range(100):
            await p.send(Item(i))
        await p.flush()
        await broker.restart()
        deadline = time.monotonic() + 30
        while not {*range(100)} <= received and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        assert set(range(100)) <= received, f"lost {sorted(set(range(100)) - received)}"
        await consumer.stop(unsubscribe=True)
