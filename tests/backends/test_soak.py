"""A soak of mixed traffic on every broker: memory, fds and tasks stay flat, throughput holds.

For ``TG_SOAK_SECONDS`` (12 in the default run; ``make soak`` runs 600, the
full ten minutes) one process keeps three kinds of traffic going on one
backend: a ``Producer`` stream into a q1 topic drained by a ``Consumer``
(bursts of 200, each flushed), request/response round trips against a
``Responder``, and fire-and-forget ``Publisher`` messages to a second
consumer.  Every second it samples the process's resident memory
(``/proc/self/statm``), its open file descriptors (``/proc/self/fd``), the
number of asyncio tasks and the messages handled in that second.

On the in-process broker the topics retain 1,000 messages instead of
100,000, so that RSS growth measures leaks rather than replay retention.
The first third is warm-up (connections, caches, a Kafka group's join).
Over the rest: RSS grows by less than 16 MiB plus 2 MiB per minute, the fd
and task counts stay within a small band, and the last third's throughput is
at least 0.6 of the middle third's.  The figures are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.brokers import Broker
from trustgraph_pubsub import Consumer, Message, Producer, Publisher, RequestResponse, Responder
from trustgraph_schema.topic import topic

SECONDS = float(os.environ.get("TG_SOAK_SECONDS", "12"))
BURST = 200
PAGE = resource.getpagesize()


@dataclass
class Item:
    n: int
    text: str = ""


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Sample:
    rss: int
    fds: int
    tasks: int
    handled: int


def fresh(label: str) -> str:
    return topic(f"soak-{label}-{os.urandom(4).hex()}", namespace="test")


@pytest.mark.parametrize("broker", ["memory", "pulsar", "kafka", "rabbitmq", "mqtt"], indirect=True)
async def test_mixed_traffic_soak(broker: Broker) -> None:
    backend = broker.make_backend()
    hub = getattr(backend, "hub", None)
    if hub is not None:
        # The in-process broker keeps the last 100,000 messages of every q1
        # topic for replay, by design; cap it so that growth measures leaks.
        retain, hub.retain = hub.retain, 1000
    stream, events = fresh("stream"), fresh("events")
    req, resp = fresh("req"), fresh("resp")
    handled = 0
    streamed = sent = 0  # handled from, and sent to, the stream topic
    caught_up = asyncio.Event()

    async def count(msg: Message) -> None:
        nonlocal handled
        handled += 1

    async def count_stream(msg: Message) -> None:
        nonlocal handled, streamed
        handled += 1
        streamed += 1
        if sent - streamed <= 5 * BURST:
            caught_up.set()

    async def echo(request: Item, props: dict[str, str]) -> Item:
        return request

    await backend.create_queue(stream, "soak")
    await backend.create_queue(events, "soak")
    parts: list[Any] = [
        Consumer(backend, stream, "soak", Item, count_stream, concurrency=8),
        Consumer(backend, events, "soak", Item, count, concurrency=4),
        Responder(backend, req, Item, resp, Item, echo, subscription="soak"),
        Producer(backend, stream, Item),
        Publisher(backend, events, Item),
        RequestResponse(backend, req, Item, resp, Item),
    ]
    for p in parts:
        await p.start()
    producer, publisher, caller = parts[3], parts[4], parts[5]
    stop = asyncio.Event()

    async def stream_load() -> None:
        # As fast as the consumer keeps up: at most 10 bursts ahead of it (a
        # soak measures the steady state, not a backlog the load builds).
        nonlocal sent
        while not stop.is_set():
            for _ in range(BURST):
                await producer.send(Item(sent, "x" * 200))
                sent += 1
            await producer.flush()
            if sent - streamed > 10 * BURST:
                caught_up.clear()
                await asyncio.wait_for(caught_up.wait(), 60)

    async def rr_load() -> None:
        i = 0
        while not stop.is_set():
            await caller.request(Item(i), timeout=60)
            await publisher.publish(Item(i))
            i += 1

    samples: list[Sample] = []
    loads = [asyncio.create_task(stream_load()), asyncio.create_task(rr_load())]
    try:
        began = time.monotonic()
        last = handled
        while time.monotonic() - began < SECONDS:
            await asyncio.sleep(1.0)
            for t in loads:
                if t.done():
                    t.result()  # a load that died fails the test with its error
            samples.append(Sample(rss_bytes(), open_fds(), len(asyncio.all_tasks()), handled - last))
            last = handled
    finally:
        stop.set()
        await asyncio.gather(*loads, return_exceptions=True)
        for p in reversed(parts):
            await p.stop()
        for t in (stream, events, req, resp):
            with contextlib.suppress(Exception):  # without queue lifecycle, the broker keeps it
                await backend.delete_queue(t, None)
        await backend.close()
        if hub is not None:
            hub.retain = retain

    third = max(1, len(samples) // 3)
    warm, middle, tail = samples[third:], samples[third:2 * third], samples[2 * third:]
    minutes = SECONDS / 60
    growth = warm[-1].rss - warm[0].rss
    fds = [s.fds for s in warm]
    tasks = [s.tasks for s in warm]
    rate_mid = sum(s.handled for s in middle) / len(middle)
    rate_tail = sum(s.handled for s in tail) / len(tail)
    print(f"\n{broker.name}: {len(samples)} s, RSS {warm[0].rss / 2**20:.1f} -> {warm[-1].rss / 2**20:.1f} MiB, "
          f"fds {min(fds)}-{max(fds)}, tasks {min(tasks)}-{max(tasks)}, "
          f"msg/s middle {rate_mid:,.0f} last {rate_tail:,.0f}")
    assert rate_mid > 0, "nothing was handled"
    assert growth < (16 + 2 * minutes) * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert max(fds) - min(fds) <= 8, f"open fds moved {min(fds)}-{max(fds)}"
    assert max(tasks) - min(tasks) <= 24, f"asyncio tasks moved {min(tasks)}-{max(tasks)}"
    assert rate_tail >= 0.6 * rate_mid, f"throughput decayed: {rate_mid:,.0f} -> {rate_tail:,.0f} msg/s"
