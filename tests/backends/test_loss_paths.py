"""The SDK's own loss paths, forced against real brokers (issue 13).

Pipelining backends (Pulsar, Kafka) hand messages to their client without
waiting for the broker.  When the client gives up on them (the broker is
gone longer than the client's send timeout), the backend producer's error
carries the unconfirmed messages and ``Producer`` sends them again on a new
backend producer.  These tests take a broker away between sends and a
flush, long enough for the client to give up, and count what a consumer
gets afterwards: at q1 nothing may be missing (duplicates are allowed and
reported).

Each test owns a private broker process, so that killing or pausing it
touches no other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import BrokerUnavailable, free_port, require_brokers
from trustgraph_pubsub import Producer, PubSubTimeoutError, get_pubsub
from trustgraph_schema.topic import topic as make_topic

pytestmark = pytest.mark.slow


@dataclass
class Item:
    n: int
    pad: str = ""


def fresh(label: str) -> str:
    return make_topic(f"loss-{uuid.uuid4().hex[:10]}-{label}", qos="q1", tenant="tg", namespace="losstest")


def unavailable(why: str) -> None:
    if require_brokers():
        pytest.fail(f"broker required (TG_REQUIRE_BROKERS=1) but unavailable: {why}")
    pytest.skip(why)


async def drain(c: Any, *, quiet: float = 3.0, within: float = 120.0) -> Counter[int]:
    """Every id that arrives until ``quiet`` seconds pass with nothing; all acked."""
    seen: Counter[int] = Counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        try:
            m = await c.receive(timeout=quiet)
        except PubSubTimeoutError:
            break
        seen[m.value().n] += 1
        await c.acknowledge(m)
    return seen


def report(label: str, sent: int, got: Counter[int]) -> tuple[int, int]:
    lost = sent - len(set(got) & set(range(sent)))
    dups = sum(got.values()) - len(got)
    print(f"{label}: sent {sent}, received {sum(got.values())}, lost {lost}, duplicates {dups}")
    return lost, dups


async def send_range(p: Producer, ids: range) -> None:
    pad = "x" * 200
    for i in ids:
        await p.send(Item(i, pad))


# -- Pulsar: SIGKILL the broker, keep it down past the send timeout -----------------------


async def test_pulsar_producer_resends_what_a_killed_broker_never_confirmed() -> None:
    from tests.brokers.pulsar import PulsarBroker

    own = PulsarBroker()
    try:
        await asyncio.to_thread(own.start)
    except BrokerUnavailable as exc:
        unavailable(str(exc))
    if own.proc is None:
        await asyncio.to_thread(own.stop)
        pytest.skip("needs a pulsar-lite this test can kill (TG_PULSAR_URL names an external one)")
    b = get_pubsub(pubsub_backend="pulsar", pulsar_host=own.url, pulsar_send_timeout_ms=1000,
                   pulsar_operation_timeout=3)
    name = fresh("pulsar")
    try:
        c = await b.create_consumer(name, "count", Item)
        await c.close()  # the durable subscription keeps everything from here on
        p = Producer(b, name, Item, send_deadline=120)
        await send_range(p, range(0, 1000))
        await p.flush()  # confirmed
        await send_range(p, range(1000, 2000))  # in flight, unconfirmed
        proc = own.proc
        assert proc is not None
        proc.kill()  # SIGKILL between the sends and a flush
        await asyncio.to_thread(proc.wait, 10)
        # Down for longer than the client's 1 s send timeout: it fails what it holds.
        await asyncio.sleep(3)

        async def back() -> None:
            await asyncio.sleep(1)
            await own.restart()

        restart = asyncio.create_task(back())
        await send_range(p, range(2000, 3000))  # blocks until the broker is back
        await p.flush()
        await p.close()
        await restart
        c = await b.create_consumer(name, "count", Item)
        got = await drain(c)
        await c.close()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(b.close(), 30)
        await asyncio.to_thread(own.stop)
    lost, _ = report("pulsar SIGKILL", 3000, got)
    assert lost == 0, f"{lost} of 3000 messages lost: {sorted(set(range(3000)) - set(got))[:20]}..."


# -- Kafka: cut the link to tansu past the request timeout ------------------------------------
# tansu keeps its data in memory only (quirk NOT_PERSISTENT): a killed tansu loses every
# message it had confirmed, which would hide the SDK's own loss.  Pausing it (SIGSTOP) does
# not lose anything either: it reads the timed-out requests when it wakes and writes them.
# A proxy that swallows the client's bytes does: what the client sent into it never reaches
# the broker, the client fails it after its request timeout, and only a resend saves it.


async def test_kafka_producer_resends_what_a_cut_link_never_delivered() -> None:
    if os.environ.get("TG_KAFKA_BOOTSTRAP"):
        pytest.skip("needs a tansu of its own behind a proxy (TG_KAFKA_BOOTSTRAP names an external Kafka)")
    from tests.brokers.kafka import _Tansu, _tansu_binary
    from tests.brokers.proxy import TcpProxy

    try:
        binary = _tansu_binary()
    except BrokerUnavailable as exc:
        unavailable(str(exc))
    workdir = Path(tempfile.mkdtemp(prefix="tg-tansu-loss-"))
    proxy_port = free_port()
    own = _Tansu(binary, workdir, "tansu-loss", advertised=f"127.0.0.1:{proxy_port}")
    try:
        await asyncio.to_thread(own.start)
    except BrokerUnavailable as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        unavailable(str(exc))
    proxy = TcpProxy("127.0.0.1", own.port, port=proxy_port)
    await proxy.start()
    b = get_pubsub(pubsub_backend="kafka", kafka_bootstrap_servers=proxy.address,
                   kafka_request_timeout_ms=2000)
    name = fresh("kafka")
    try:
        await b.create_queue(name, "count")  # the group's offsets sit at the start
        p = Producer(b, name, Item, send_deadline=120)
        await send_range(p, range(0, 1000))
        await p.flush()  # confirmed
        proxy.blackhole()  # connections stay open; nothing reaches tansu, nothing comes back

        async def resume() -> None:
            # Past the 2 s request timeout: the client fails what it holds.
            await asyncio.sleep(5)
            proxy.resume()

        # The sends are accepted by the client until its buffer is full, then
        # block (Producer retrying) until the link is back.
        resuming = asyncio.create_task(resume())
        await send_range(p, range(1000, 2000))
        await resuming
        await send_range(p, range(2000, 3000))
        await p.flush()
        await p.close()
        c = await b.create_consumer(name, "count", Item)
        got = await drain(c)
        await c.close()
    finally:
        proxy.resume()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(b.close(), 30)
        await proxy.close()
        await asyncio.to_thread(own.kill)
        shutil.rmtree(workdir, ignore_errors=True)
    assert proxy.discarded > 0, "the proxy swallowed nothing: the loss path was not forced"
    lost, _ = report("kafka cut link", 3000, got)
    assert lost == 0, f"{lost} of 3000 messages lost: {sorted(set(range(3000)) - set(got))[:20]}..."
