"""``Consumer``: ack, nack, dead-letter, bounded concurrency, drain, reconnect."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.turns import LoopTurns
from trustgraph_pubsub import (
    BadTopicError,
    ConfigurationError,
    Consumer,
    Message,
    PubSubError,
    PubSubTimeoutError,
)
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub
from trustgraph_pubsub.metrics import Metrics
from trustgraph_pubsub.naming import dead_letter_topic
from trustgraph_pubsub.retry import Backoff


@dataclass
class Item:
    n: int


def fresh() -> str:
    return f"q1/tg/test/c{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hub() -> MemoryHub:
    return MemoryHub()


@pytest.fixture
async def mb(hub: MemoryHub) -> AsyncIterator[MemoryBackend]:
    b = MemoryBackend(hub)
    yield b
    await b.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


async def send(b: MemoryBackend, topic: str, *items: Any, props: dict[str, str] | None = None) -> None:
    p = await b.create_producer(topic, None if items and isinstance(items[0], bytes) else Item)
    for it in items:
        await p.send(it, props)
    await p.close()


async def leftovers(b: MemoryBackend, topic: str, sub: str, schema: Any = Item) -> list[Any]:
    """What the subscription still holds (unacked or unreceived)."""
    c = await b.create_consumer(topic, sub, schema)
    out = []
    while True:
        try:
            m = await c.receive(timeout=0.05)
        except PubSubTimeoutError:
            break
        out.append(m)
        await c.acknowledge(m)
    await c.close()
    return out


async def wait_until(cond: Any, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_success_acks(mb: MemoryBackend, metrics: Metrics) -> None:
    t = fresh()
    seen: list[int] = []

    async def handler(msg: Message) -> None:
        seen.append(msg.value().n)

    async with Consumer(mb, t, "s", Item, handler, metrics=metrics):
        await send(mb, t, *(Item(n) for n in range(10)))
        await wait_until(lambda: len(seen) == 10)
    assert seen == list(range(10))
    assert await leftovers(mb, t, "s") == []
    assert metrics.value("messages_total", topic=t, subscription="s", backend="memory") == 10


async def test_a_plain_function_handler_acks_and_its_exception_nacks(
    mb: MemoryBackend, metrics: Metrics
) -> None:
    """A handler may be a plain function returning None (``Subscriber``'s is):
    its return acknowledges, its exception negatively acknowledges, as for an
    async one."""
    t = fresh()
    attempts: Counter[int] = Counter()
    done: list[tuple[int, int]] = []

    def handler(msg: Message) -> None:
        n = msg.value().n
        attempts[n] += 1
        if n % 2 and attempts[n] == 1:
            raise RuntimeError("first try of an odd one fails")
        done.append((n, msg.redelivery_count))

    async with Consumer(mb, t, "s", Item, handler, concurrency=4, metrics=metrics):
        await send(mb, t, *(Item(n) for n in range(10)))
        await wait_until(lambda: len(done) == 10)
    assert sorted(done) == [(n, n % 2) for n in range(10)]
    assert await leftovers(mb, t, "s") == []
    assert metrics.value("redeliveries_total", topic=t, subscription="s", backend="memory") == 5


async def test_exception_nacks_and_the_message_comes_back(mb: MemoryBackend, metrics: Metrics) -> None:
    t = fresh()
    attempts: Counter[int] = Counter()
    done: list[tuple[int, int]] = []

    async def handler(msg: Message) -> None:
        n = msg.value().n
        attempts[n] += 1
        if attempts[n] == 1:
            raise RuntimeError("first try fails")
        done.append((n, msg.redelivery_count))

    async with Consumer(mb, t, "s", Item, handler, metrics=metrics):
        await send(mb, t, *(Item(n) for n in range(10)))
        await wait_until(lambda: len(done) == 10)
    assert sorted(done) == [(n, 1) for n in range(10)]
    assert await leftovers(mb, t, "s") == []
    assert metrics.value("redeliveries_total", topic=t, subscription="s", backend="memory") == 10


async def test_poison_message_is_dead_lettered_and_the_stream_flows(
    mb: MemoryBackend, metrics: Metrics
) -> None:
    t = fresh()
    dlq = await mb.create_consumer(dead_letter_topic(t), "dlq", Item)
    attempts: Counter[int] = Counter()
    ok: list[int] = []

    async def handler(msg: Message) -> None:
        n = msg.value().n
        attempts[n] += 1
        if n == 3:
            raise ValueError("cannot handle three " + "x" * 5000)
        ok.append(n)

    async with Consumer(mb, t, "s", Item, handler, max_redeliveries=2, metrics=metrics):
        await send(mb, t, *(Item(n) for n in range(8)), props={"origin": "test"})
        dead = await dlq.receive(timeout=5)
        await wait_until(lambda: len(ok) == 7)
    assert attempts[3] == 3  # max_redeliveries + 1
    assert sorted(ok) == [0, 1, 2, 4, 5, 6, 7]
    assert dead.value() == Item(3)
    props = dead.properties()
    assert props["origin"] == "test"
    assert props["x-dlq-error"].startswith("cannot handle three")
    assert len(props["x-dlq-error"]) <= 1000
    assert props["x-dlq-error-type"] == "ValueError"
    assert props["x-dlq-topic"] == t
    assert props["x-dlq-subscription"] == "s"
    assert props["x-dlq-deliveries"] == "3"
    assert await leftovers(mb, t, "s") == []
    assert metrics.value("dead_lettered_total", topic=t, subscription="s", backend="memory") == 1


async def test_undecodable_message_is_dead_lettered_at_once(mb: MemoryBackend) -> None:
    t = fresh()
    dlq = await mb.create_consumer(dead_letter_topic(t), "dlq", None)
    handled: list[int] = []

    async def handler(msg: Message) -> None:
        handled.append(msg.value().n)

    async with Consumer(mb, t, "s", Item, handler, max_redeliveries=5):
        await send(mb, t, b"not json", b'{"n": "wrong type"}', props={"k": "v"})
        await send(mb, t, Item(1))
        first = await dlq.receive(timeout=5)
        second = await dlq.receive(timeout=5)
        await wait_until(lambda: handled == [1])
    assert first.value() == b"not json"
    assert second.value() == b'{"n": "wrong type"}'
    for dead in (first, second):
        props = dead.properties()
        assert props["x-dlq-error-type"] == "MessageDecodeError"
        assert props["x-dlq-deliveries"] == "1"
        assert props["k"] == "v"
        assert t in props["x-dlq-error"]


async def test_concurrency_is_bounded(mb: MemoryBackend) -> None:
    t = fresh()
    running = 0
    peak = 0
    done = 0

    async def handler(msg: Message) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        done += 1

    async with Consumer(mb, t, "s", Item, handler, concurrency=4):
        await send(mb, t, *(Item(n) for n in range(40)))
        await wait_until(lambda: done == 40)
    assert peak == 4


async def test_stop_drains_in_flight_handlers_and_acks_them(mb: MemoryBackend) -> None:
    t = fresh()
    release = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    async def handler(msg: Message) -> None:
        started.append(msg.value().n)
        await release.wait()
        finished.append(msg.value().n)

    c = Consumer(mb, t, "s", Item, handler, concurrency=2)
    await c.start()
    await send(mb, t, *(Item(n) for n in range(5)))
    await wait_until(lambda: len(started) == 2)
    stopping = asyncio.create_task(c.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the two handlers
    release.set()
    await stopping
    assert sorted(finished) == [0, 1]
    rest = await leftovers(mb, t, "s")
    assert [(m.value().n, m.redelivery_count) for m in rest] == [(2, 0), (3, 0), (4, 0)]


async def test_cancelling_run_behaves_like_stop(mb: MemoryBackend) -> None:
    t = fresh()
    entered = asyncio.Event()
    finished: list[int] = []

    async def handler(msg: Message) -> None:
        entered.set()
        await asyncio.sleep(0.1)
        finished.append(msg.value().n)

    c = Consumer(mb, t, "s", Item, handler)
    runner = asyncio.create_task(c.run())
    await asyncio.sleep(0.01)
    await send(mb, t, Item(1), Item(2))
    await entered.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert finished == [1]
    assert not c.running
    assert [m.value().n for m in await leftovers(mb, t, "s")] == [2]


async def test_drain_timeout_cancels_stuck_handlers_and_leaves_them_unacked(mb: MemoryBackend) -> None:
    t = fresh()
    entered = asyncio.Event()

    async def handler(msg: Message) -> None:
        entered.set()
        await asyncio.sleep(60)

    c = Consumer(mb, t, "s", Item, handler)
    await c.start()
    await send(mb, t, Item(1))
    await entered.wait()
    await asyncio.wait_for(c.stop(drain_timeout=0.05), 2)
    rest = await leftovers(mb, t, "s")
    assert [(m.value().n, m.redelivery_count) for m in rest] == [(1, 1)]


async def test_reconnects_after_a_broker_restart(
    hub: MemoryHub, mb: MemoryBackend, metrics: Metrics
) -> None:
    t = fresh()
    seen: set[int] = set()

    async def handler(msg: Message) -> None:
        seen.add(msg.value().n)
        await asyncio.sleep(0)

    c = Consumer(mb, t, "s", Item, handler, concurrency=3, metrics=metrics,
                 backoff=Backoff(base=0.01, cap=0.05))
    await c.start()
    await send(mb, t, *(Item(n) for n in range(50)))
    await hub.restart()
    await send(mb, t, *(Item(n) for n in range(50, 100)))
    await wait_until(lambda: len(seen) == 100)
    await c.stop()
    assert seen == set(range(100))
    assert metrics.value("reconnects_total", topic=t, subscription="s", backend="memory") == 1
    assert await leftovers(mb, t, "s") == []


async def test_stop_keeps_the_subscription_unless_asked(mb: MemoryBackend) -> None:
    t = fresh()

    async def handler(msg: Message) -> None:
        return None

    c = Consumer(mb, t, "keep", Item, handler)
    await c.start()
    await c.stop()
    await c.stop()  # idempotent
    assert await mb.queue_exists(t, "keep")
    c = Consumer(mb, t, "gone", Item, handler)
    await c.start()
    await c.stop(unsubscribe=True)
    assert not await mb.queue_exists(t, "gone")


async def test_start_subscribes_before_returning(mb: MemoryBackend) -> None:
    t = fresh()
    got: list[int] = []

    async def handler(msg: Message) -> None:
        got.append(msg.value().n)

    c = Consumer(mb, t, "s", Item, handler, initial_position="latest")
    await c.start()
    assert await mb.queue_exists(t, "s")
    await send(mb, t, Item(1))
    await wait_until(lambda: got == [1])
    await c.stop()


async def test_bad_configuration_is_refused(mb: MemoryBackend) -> None:
    async def handler(msg: Message) -> None:
        return None

    with pytest.raises(ConfigurationError, match="concurrency"):
        Consumer(mb, fresh(), "s", Item, handler, concurrency=0)
    with pytest.raises(ConfigurationError, match="max_redeliveries"):
        Consumer(mb, fresh(), "s", Item, handler, max_redeliveries=-1)
    with pytest.raises(BadTopicError, match="subscription"):
        Consumer(mb, fresh(), "no spaces", Item, handler)
    with pytest.raises(BadTopicError):
        Consumer(mb, "q1/tg/flow", "s", Item, handler)
    with pytest.raises(BadTopicError):
        Consumer(mb, fresh(), "s", Item, handler, dead_letter_topic="not-a-topic")
    with pytest.raises(ConfigurationError, match="dead_letter_topic"):
        Consumer(mb, "persistent://tg/flow/x", "s", Item, handler)
    t = fresh()
    first = Consumer(mb, t, "s", Item, handler, consumer_type="exclusive")
    await first.start()
    with pytest.raises(PubSubError, match="exclusive"):
        await Consumer(mb, t, "s", Item, handler, consumer_type="exclusive").start()
    await first.stop()


# -- the worker pool: order, hand-over, stopping -----------------------------


async def test_handlers_start_in_receive_order_when_they_wait(mb: MemoryBackend) -> None:
    t = fresh()
    started: list[int] = []
    finished: list[int] = []

    async def handler(msg: Message) -> None:
        n = msg.value().n
        started.append(n)
        await asyncio.sleep(0.001 * (n % 5))  # finish out of order
        finished.append(n)

    async with Consumer(mb, t, "s", Item, handler, concurrency=8):
        await send(mb, t, *(Item(n) for n in range(200)))
        await wait_until(lambda: len(finished) == 200)
    assert started == list(range(200))
    assert finished != started  # they did overlap
    assert await leftovers(mb, t, "s") == []


async def test_handlers_that_never_wait_share_the_loop(mb: MemoryBackend, metrics: Metrics) -> None:
    t = fresh()
    seen: list[int] = []
    ticks = 0
    draining = True

    async def ticker() -> None:
        nonlocal ticks
        while draining:
            ticks += 1
            await asyncio.sleep(0)

    async def handler(msg: Message) -> None:
        seen.append(msg.value().n)

    await mb.ensure_queue(t, "s")
    await send(mb, t, *(Item(n) for n in range(1000)))  # a backlog waiting
    c = Consumer(mb, t, "s", Item, handler, concurrency=16, metrics=metrics)
    tick_task = asyncio.create_task(ticker())
    await c.start()
    await wait_until(lambda: len(seen) == 1000)
    draining = False
    await tick_task
    await c.stop()
    assert seen == list(range(1000))
    # The loop turned while the backlog drained; how often (once per time slice,
    # not per 64 messages, so a fast drain may turn it only a few times) is
    # test_handlers_that_never_wait_yield_after_a_time_slice's to check.
    assert ticks >= 1, ticks
    labels = {"topic": t, "subscription": "s", "backend": "memory"}
    assert metrics.value("messages_total", **labels) == 1000
    assert metrics.value("handler_seconds_count", **labels) == 1000
    assert metrics.value("errors_total", **labels) == 0
    assert await leftovers(mb, t, "s") == []


async def test_handlers_that_never_wait_yield_after_a_time_slice(
    mb: MemoryBackend, metrics: Metrics
) -> None:
    """A worker yields once it has run ``_SLICE`` (2 ms), not after a count of
    messages: 40 handlers of at least 1 ms that never wait let another task run
    at least every third message.  Counted, not timed: each message takes 1 ms or
    more however busy the machine is.  (A yield every 64 messages gave none.)"""
    t = fresh()
    seen: list[int] = []

    def handler(msg: Message) -> None:
        time.sleep(0.001)  # busy, and never gives the loop back
        seen.append(msg.value().n)

    await mb.ensure_queue(t, "s")
    await send(mb, t, *(Item(n) for n in range(40)))
    c = Consumer(mb, t, "s", Item, handler, concurrency=1, metrics=metrics)
    async with LoopTurns() as turns:
        await c.start()
        await wait_until(lambda: len(seen) == 40)
    await c.stop()
    assert seen == list(range(40))
    assert turns.count >= 12, turns.count


async def test_stop_with_some_workers_busy_takes_no_new_message(mb: MemoryBackend) -> None:
    t = fresh()
    release = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    async def handler(msg: Message) -> None:
        started.append(msg.value().n)
        await release.wait()
        finished.append(msg.value().n)

    c = Consumer(mb, t, "s", Item, handler, concurrency=3)
    await c.start()
    await send(mb, t, Item(0), Item(1))
    await wait_until(lambda: len(started) == 2)  # the third worker waits in receive
    stopping = asyncio.create_task(c.stop())
    await asyncio.sleep(0.02)
    await send(mb, t, Item(9))  # arrives while stopping: must stay in the subscription
    await asyncio.sleep(0.02)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 2)
    assert sorted(finished) == [0, 1] and sorted(started) == [0, 1]
    rest = await leftovers(mb, t, "s")
    assert [(m.value().n, m.redelivery_count) for m in rest] == [(9, 0)]


async def test_a_handler_may_stop_its_own_consumer(mb: MemoryBackend) -> None:
    t = fresh()
    calls: list[int] = []
    c: Consumer | None = None

    async def handler(msg: Message) -> None:
        calls.append(msg.value().n)
        assert c is not None
        await c.stop()

    c = Consumer(mb, t, "s", Item, handler)
    await c.start()
    await send(mb, t, Item(1), Item(2))
    await wait_until(lambda: not c.running)
    await asyncio.wait_for(c.stop(), 2)  # settled, no deadlock
    assert calls == [1]
    # Its message was settled after the close, so it is still there, and so is the next.
    assert sorted(m.value().n for m in await leftovers(mb, t, "s")) == [1, 2]


async def test_run_returns_once_stopped_elsewhere(mb: MemoryBackend) -> None:
    t = fresh()

    async def handler(msg: Message) -> None:
        return None

    c = Consumer(mb, t, "s", Item, handler, concurrency=4)
    runner = asyncio.create_task(c.run())
    await wait_until(lambda: c.running)
    await c.stop()
    await asyncio.wait_for(runner, 2)
    assert not c.running


def test_handler_latency_histogram_has_prometheus_buckets() -> None:
    from prometheus_client import generate_latest

    reg = CollectorRegistry()
    metrics = Metrics(reg)
    bound = metrics.bind("q1/tg/x/y", "s", "memory")
    for seconds in (0.0005, 0.003, 100.0):  # on a bound, inside, above every bound
        bound.latency(seconds)
    labels = {"topic": "q1/tg/x/y", "subscription": "s", "backend": "memory"}

    def bucket(le: str) -> float:
        return metrics.value("handler_seconds_bucket", le=le, **labels)

    assert bucket("0.0005") == 1
    assert bucket("0.0025") == 1
    assert bucket("0.005") == 2
    assert bucket("30.0") == 2
    assert bucket("+Inf") == 3
    assert metrics.value("handler_seconds_count", **labels) == 3
    assert metrics.value("handler_seconds_sum", **labels) == pytest.approx(100.0035)
    text = generate_latest(reg).decode()
    assert "# TYPE trustgraph_pubsub_handler_seconds histogram" in text
    assert "# TYPE trustgraph_pubsub_messages_total counter" in text or (
        "# TYPE trustgraph_pubsub_messages counter" in text
    )
    producer = metrics.bind_producer("q1/tg/x/y", "memory")
    producer.sent()
    producer.sent()
    assert metrics.value("sent_total", topic="q1/tg/x/y", backend="memory") == 2


async def test_a_handler_raising_cancelled_error_is_a_failure_not_a_dead_worker(
    mb: MemoryBackend, metrics: Metrics
) -> None:
    t = fresh()
    attempts: Counter[int] = Counter()
    done: list[int] = []

    async def handler(msg: Message) -> None:
        n = msg.value().n
        attempts[n] += 1
        if attempts[n] == 1:
            doomed = asyncio.get_running_loop().create_future()
            doomed.cancel()
            await doomed  # raises CancelledError although nobody cancelled the consumer
        done.append(n)

    async with Consumer(mb, t, "s", Item, handler, metrics=metrics):  # one worker
        await send(mb, t, Item(1), Item(2))
        await wait_until(lambda: sorted(done) == [1, 2])
    assert attempts == Counter({1: 2, 2: 2})
    assert metrics.value("redeliveries_total", topic=t, subscription="s", backend="memory") == 2
    assert await leftovers(mb, t, "s") == []


async def test_own_cancelled_error_with_concurrency_is_a_failure_too(
    mb: MemoryBackend, metrics: Metrics
) -> None:
    """The same with several workers, where a handler that waits passes the turn on."""
    t = fresh()
    attempts: Counter[int] = Counter()
    done: list[int] = []

    async def handler(msg: Message) -> None:
        n = msg.value().n
        attempts[n] += 1
        await asyncio.sleep(0)  # suspend first: the turn passes to another worker
        if attempts[n] == 1:
            doomed = asyncio.get_running_loop().create_future()
            doomed.cancel()
            await doomed
        done.append(n)

    async with Consumer(mb, t, "s", Item, handler, concurrency=4, metrics=metrics):
        await send(mb, t, *(Item(i) for i in range(6)))
        await wait_until(lambda: sorted(done) == list(range(6)))
    assert attempts == Counter({i: 2 for i in range(6)})
    assert await leftovers(mb, t, "s") == []


async def test_watched_handler_sees_errors_as_under_plain_await(mb: MemoryBackend) -> None:
    """A handler that catches a thrown error and raises another keeps the context."""
    t = fresh()
    seen: list[BaseException | None] = []
    started = asyncio.Event()

    async def handler(msg: Message) -> None:
        try:
            started.set()
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # swallowed: what follows happens outside any except block
        try:
            raise ValueError("cleanup failed")
        except ValueError as exc:
            seen.append(exc.__context__)
        raise asyncio.CancelledError

    c = Consumer(mb, t, "s", Item, handler, concurrency=2)
    await c.start()
    await send(mb, t, Item(1))
    await asyncio.wait_for(started.wait(), 5)
    await c.stop(drain_timeout=0.1)
    # Under a plain ``await`` nothing was being handled when ValueError was raised.
    assert seen == [None], seen
    assert [m.value().n for m in await leftovers(mb, t, "s")] == [1]


async def test_a_handler_stopping_during_an_outside_stop_does_not_deadlock(mb: MemoryBackend) -> None:
    t = fresh()
    c: Consumer | None = None
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(msg: Message) -> None:
        entered.set()
        await release.wait()
        assert c is not None
        await c.stop()  # stop() from outside is already waiting for this handler

    c = Consumer(mb, t, "s", Item, handler, concurrency=2)
    await c.start()
    await send(mb, t, Item(1))
    await asyncio.wait_for(entered.wait(), 5)
    outside = asyncio.create_task(c.stop())
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(outside, 5)
    assert not c.running


async def test_a_failing_dead_letter_send_backs_off(mb: MemoryBackend, monkeypatch: Any) -> None:
    """If dead-lettering keeps failing, the message is nacked after a growing pause,
    not spun through the broker as fast as it can go."""
    t = fresh()
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("poison")

    c = Consumer(mb, t, "s", Item, handler, max_redeliveries=0)
    c._dlq_backoff = Backoff(base=0.2, cap=0.2, jitter=False)

    async def refuse(*_: Any, **__: Any) -> None:
        raise PubSubError("not allowed to publish to the dead-letter topic")

    async with c:
        dlq = await c._dlq_producer()
        monkeypatch.setattr(dlq, "send", refuse)
        await send(mb, t, Item(1))
        await asyncio.sleep(1.0)
    # One attempt per 0.2 s pause at most (plus the first), not thousands.
    assert 1 <= calls <= 6, calls
    assert [m.value().n for m in await leftovers(mb, t, "s")] == [1]


class _Recording(MemoryBackend):
    """The memory backend, noting the options each ``create_consumer`` got."""

    def __init__(self, hub: MemoryHub) -> None:
        super().__init__(hub)
        self.opts: list[dict[str, Any]] = []

    async def create_consumer(self, *args: Any, **opts: Any) -> Any:
        self.opts.append(opts)
        return await super().create_consumer(*args, **opts)


async def _noop(msg: Message) -> None:
    return None


@pytest.mark.parametrize(
    ("concurrency", "prefetch", "asked"),
    [(1, None, 100), (1, 7, 7), (4, None, 100), (300, None, 300), (8, 2, 8)],
)
async def test_prefetch_is_its_own_option(
    hub: MemoryHub, concurrency: int, prefetch: int | None, asked: int
) -> None:
    # concurrency=1 must not mean one message per broker round trip; prefetch
    # never goes below concurrency, since each handler needs a message.
    b = _Recording(hub)
    kw: dict[str, Any] = {} if prefetch is None else {"prefetch": prefetch}
    c = Consumer(b, fresh(), "s", Item, _noop, concurrency=concurrency, **kw)
    await c.start()
    await c.stop()
    await b.close()
    assert c.prefetch == asked
    assert b.opts[0]["prefetch"] == asked


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_prefetch_is_validated(mb: MemoryBackend, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="prefetch"):
        Consumer(mb, fresh(), "s", Item, _noop, prefetch=bad)


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_handler_latency_leaves_out_the_wait_for_a_message(
    mb: MemoryBackend, metrics: Metrics, concurrency: int
) -> None:
    """The clock of a message taken without waiting starts when the one before it
    ended; after a wait for a message it starts again, so idle time is no latency."""
    t = fresh()
    labels = {"topic": t, "subscription": "s", "backend": "memory"}

    async def handler(msg: Message) -> None:
        if msg.value().n == 99:
            await asyncio.sleep(0.3)

    await mb.ensure_queue(t, "s")
    c = Consumer(mb, t, "s", Item, handler, concurrency=concurrency, metrics=metrics)
    await c.start()
    try:
        await send(mb, t, *(Item(n) for n in range(5)))  # back to back
        await wait_until(lambda: metrics.value("handler_seconds_count", **labels) == 5)
        await asyncio.sleep(0.4)  # idle: nothing to take
        await send(mb, t, Item(5))
        await wait_until(lambda: metrics.value("handler_seconds_count", **labels) == 6)
        await send(mb, t, Item(99))
        await wait_until(lambda: metrics.value("handler_seconds_count", **labels) == 7)
    finally:
        await c.stop()
    # The quick ones (the one after the idle 0.4 s too) end within 0.1 s; the
    # sleeper lands above 0.25 s, within 0.5 s.
    assert metrics.value("handler_seconds_bucket", le="0.1", **labels) == 6
    assert metrics.value("handler_seconds_bucket", le="0.25", **labels) == 6
    assert metrics.value("handler_seconds_bucket", le="0.5", **labels) == 7
    assert 0.3 <= metrics.value("handler_seconds_sum", **labels) < 0.5
