"""The conformance battery of CONFORMANCE.md, written once for every backend.

``Battery`` holds one test per case; each backend subclasses it in a
three-line module that sets ``broker_name`` (FastStream's layout).  The tests
talk to the real broker the fixture in ``tests/brokers`` provides.

Rules the battery keeps:

* a case is skipped only where the backend's ``Capabilities`` says it cannot
  hold (the reason names the capability), or where a quirk the broker fixture
  declares defeats it (the reason names the quirk).  The backend's name is
  never looked at;
* every test uses fresh topic and subscription names (a uuid suffix), so runs
  never see each other's messages;
* every wait is bounded: a broken backend fails, it does not hang;
* ``TG_CONFORMANCE_SHORT=1`` divides the message counts by ten (floor 10);
  ``TG_CONFORMANCE_WAIT`` sets the longest wait for messages (default 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import json
import logging
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import pytest
from prometheus_client import CollectorRegistry

from tests.brokers import (
    DUPLICATES_UNDER_LOAD,
    NOT_PERSISTENT,
    STUCK_GROUP_AFTER_CONCURRENT_LEAVE,
    Broker,
)
from tests.turns import LoopTurns
from trustgraph_pubsub import (
    AuthenticationError,
    BackendConsumer,
    BackendProducer,
    BadTopicError,
    BrokerConnectionError,
    ConfigurationError,
    Message,
    PubSubBackend,
    PubSubTimeoutError,
    available_backends,
    get_pubsub,
    naming,
)
from trustgraph_pubsub.backend import InitialPosition
from trustgraph_pubsub.factory import BACKEND_OPTIONS
from trustgraph_pubsub.metrics import Metrics
from trustgraph_pubsub.retry import Backoff
from trustgraph_schema.topic import topic

log = logging.getLogger(__name__)

SHORT = os.environ.get("TG_CONFORMANCE_SHORT", "") not in ("", "0", "false", "no")

#: Longest wait for a batch of messages to arrive.  Generous: the brokers here
#: share two busy cores; still bounded so a broken backend fails.  Scale it
#: with ``TG_CONFORMANCE_WAIT`` (seconds) on a slower or faster machine.
WAIT = float(os.environ.get("TG_CONFORMANCE_WAIT", "") or 60.0)
#: How long "nothing more arrives" is watched for.
QUIET = 1.0
#: Slack over a ``receive(timeout=...)`` before the battery calls it ignored.
GRACE = 10.0
#: Reconnection backoff for the resilient clients in the restart case.
FAST_BACKOFF = (0.05, 2.0)


def count(full: int, floor: int = 10) -> int:
    """A case's message count: ``full``, or a tenth of it (>= ``floor``) in short mode."""
    return max(floor, full // 10) if SHORT else full


@dataclass
class Item:
    """The battery's everyday message."""

    n: int
    key: str = ""
    text: str = ""


@dataclass
class Inner:
    name: str
    tags: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass
class Rich:
    """Every shape the codec must carry (case 2)."""

    id: str
    count: int = 0
    ratio: float = 0.0
    flag: bool = False
    text: str = ""
    blob: bytes = b""
    inners: list[Inner] = field(default_factory=list)
    matrix: list[list[int]] = field(default_factory=list)
    table: dict[str, list[int]] = field(default_factory=dict)
    by_name: dict[str, Inner] = field(default_factory=dict)
    optional: str | None = None
    optional_inner: Inner | None = None


@dataclass
class Req:
    """A request of case 13: the responder sleeps ``delay`` s, streams ``chunks`` replies."""

    n: int
    caller: str = ""
    delay: float = 0.0
    chunks: int = 0


@dataclass
class Resp:
    n: int
    caller: str = ""
    chunk: int = 0


async def recv(consumer: BackendConsumer, within: float) -> Message | None:
    """One message, or None when ``receive(timeout=within)`` timed out as asked.

    A backend that ignores the timeout fails the test instead of hanging it.
    """
    try:
        async with asyncio.timeout(within + GRACE):
            return await consumer.receive(timeout=within)
    except PubSubTimeoutError:
        return None
    except TimeoutError as exc:
        raise AssertionError(
            f"{consumer.topic}: receive(timeout={within}) did not return within {within + GRACE}s"
        ) from exc


async def receive_ids(
    consumer: BackendConsumer,
    want: set[int],
    within: float = WAIT,
    *,
    ack: bool = True,
) -> Counter[int]:
    """Receive until every id in ``want`` was seen (or ``within`` s passed); count every id seen."""
    seen: Counter[int] = Counter()
    deadline = time.monotonic() + within
    while not want <= seen.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        msg = await recv(consumer, min(left, 1.0))
        if msg is None:
            continue
        seen[msg.value().n] += 1
        if ack:
            await consumer.acknowledge(msg)
    return seen


async def receive_quiet(consumer: BackendConsumer, seconds: float = QUIET) -> list[Message]:
    """Everything that arrives until ``seconds`` pass with nothing; acknowledged."""
    out: list[Message] = []
    while (msg := await recv(consumer, seconds)) is not None:
        out.append(msg)
        await consumer.acknowledge(msg)
    return out


async def wait_until(cond: Callable[[], bool], within: float = WAIT, step: float = 0.05) -> bool:
    """Poll ``cond`` until it holds or ``within`` seconds pass; the last answer."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() >= deadline:
            return cond()
        await asyncio.sleep(step)
    return True


async def wait_event(event: asyncio.Event, within: float = WAIT) -> bool:
    """Whether ``event`` is set within ``within`` seconds.

    For waiting on another task (a handler, a consumer's worker) to reach a
    state it announces itself: no guessed sleep, and bounded.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await event.wait()
    return event.is_set()


def consumer_metrics() -> Metrics:
    """A ``Metrics`` of its own, so a case can read what its ``Consumer`` counted
    (reconnects above all) without seeing any other test's counts."""
    return Metrics(CollectorRegistry())


def reconnects(metrics: Metrics, backend: PubSubBackend, name: str, sub: str) -> float:
    """How often the ``Consumer`` on ``name``/``sub`` recreated its backend consumer."""
    return metrics.value("reconnects_total", topic=name, subscription=sub, backend=backend.name)


class ReceiveWatch:
    """The real backend, with its consumers' ``receive`` calls made visible.

    ``receiving`` is set while a ``receive`` of a consumer made through this
    wrapper is waiting, so a case can wait for a ``Consumer`` to be idle in
    ``receive`` instead of sleeping and hoping.  ``awaited`` counts the
    ``receive`` and ``acknowledge`` coroutines its consumers ran.  With
    ``nowait=False`` they hide their plain calls (``NowaitConsumer``), as a
    backend without them would.  Everything else is the backend's own: this
    only observes, it changes no broker behaviour.
    """

    def __init__(self, backend: PubSubBackend, *, nowait: bool = True) -> None:
        self._backend = backend
        self._nowait = nowait
        self.receiving = asyncio.Event()
        self.awaited: Counter[str] = Counter()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._backend, attr)

    async def create_consumer(self, *args: Any, **kwargs: Any) -> BackendConsumer:
        inner = await self._backend.create_consumer(*args, **kwargs)
        return cast(BackendConsumer, _WatchedConsumer(inner, self))


class _WatchedConsumer:
    _PLAIN = frozenset({"receive_nowait", "acknowledge_nowait"})

    def __init__(self, inner: BackendConsumer, watch: ReceiveWatch) -> None:
        self._inner = inner
        self._watch = watch

    def __getattr__(self, attr: str) -> Any:
        if attr in self._PLAIN and not self._watch._nowait:
            raise AttributeError(attr)
        return getattr(self._inner, attr)

    async def receive(self, timeout: float | None = None) -> Message:  # noqa: ASYNC109 (contract)
        self._watch.awaited["receive"] += 1
        self._watch.receiving.set()
        try:
            return await self._inner.receive(timeout)
        finally:
            self._watch.receiving.clear()

    async def acknowledge(self, message: Message) -> None:
        self._watch.awaited["acknowledge"] += 1
        await self._inner.acknowledge(message)


class SendWatch:
    """The real backend, with its producers' awaited ``send`` calls counted
    (``awaited``).  With ``nowait=False`` they hide their plain call
    (``NowaitProducer``), as a backend without one would.  It only observes."""

    def __init__(self, backend: PubSubBackend, *, nowait: bool = True) -> None:
        self._backend = backend
        self._nowait = nowait
        self.awaited = 0

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._backend, attr)

    async def create_producer(self, *args: Any, **kwargs: Any) -> BackendProducer:
        inner = await self._backend.create_producer(*args, **kwargs)
        return cast(BackendProducer, _WatchedProducer(inner, self))


class _WatchedProducer:
    def __init__(self, inner: BackendProducer, watch: SendWatch) -> None:
        self._inner = inner
        self._watch = watch

    def __getattr__(self, attr: str) -> Any:
        if attr == "send_nowait" and not self._watch._nowait:
            raise AttributeError(attr)
        return getattr(self._inner, attr)

    async def send(self, *args: Any, **kwargs: Any) -> None:
        self._watch.awaited += 1
        await self._inner.send(*args, **kwargs)


def missing_text(missing: set[int], total: int) -> str:
    shown = sorted(missing)[:20]
    return f"{len(missing)} of {total} never arrived (first: {shown})"


class Ctx:
    """Names, clients and clean-up for one test.

    Topics are ``q1/tg/conformance/conf-<uid>-<label>``: fresh per test, and
    labels such as ``iso`` / ``iso.x`` give names that are prefixes of each
    other, which catches prefix-matching bugs.
    """

    def __init__(self, broker: Broker, backend: PubSubBackend) -> None:
        self.broker = broker
        self.backend = backend
        self.caps = backend.capabilities
        self.uid = uuid.uuid4().hex[:12]
        self._topics: list[str] = []
        self._producers: list[BackendProducer] = []
        self._consumers: list[BackendConsumer] = []
        self._deferred: list[Callable[[], Awaitable[Any]]] = []

    def topic(self, label: str, qos: str = "q1") -> str:
        name = topic(f"conf-{self.uid}-{label}", qos=qos, tenant="tg", namespace="conformance")
        self._topics.append(name)
        return name

    def sub(self, label: str) -> str:
        return f"{label}-{self.uid}"

    def require(self, capability: str, case: str) -> None:
        """Skip unless the backend's ``Capabilities.<capability>`` holds."""
        if not getattr(self.caps, capability):
            pytest.skip(f"case {case}: backend Capabilities.{capability} is False")

    async def producer(
        self, name: str, schema: type[Any] | None = Item, **opts: Any
    ) -> BackendProducer:
        p = await self.backend.create_producer(name, schema, **opts)
        self._producers.append(p)
        return p

    async def consumer(
        self,
        name: str,
        subscription: str,
        schema: type[Any] | None = Item,
        initial_position: InitialPosition = "latest",
        **opts: Any,
    ) -> BackendConsumer:
        c = await self.backend.create_consumer(
            name, subscription, schema, initial_position=initial_position, **opts
        )
        self._consumers.append(c)
        return c

    def track(self, name: str) -> str:
        """Clean up ``name`` too (a topic the SDK creates, such as a dead-letter topic)."""
        self._topics.append(name)
        return name

    def defer(self, fn: Callable[[], Awaitable[Any]]) -> None:
        """Run ``fn`` at clean-up (SDK clients' ``stop``/``close``), last in first out."""
        self._deferred.append(fn)

    async def cleanup(self) -> None:
        """Stop clients, unsubscribe what is still open, delete topics where the backend can.

        Best effort: clean-up errors are logged, never raised over the test's
        own outcome, and each step is bounded.
        """
        for fn in reversed(self._deferred):
            await self._quietly(fn, "stop")
        for p in self._producers:
            await self._quietly(p.close, f"close producer {p.topic}")
        for c in reversed(self._consumers):
            try:
                await asyncio.wait_for(c.unsubscribe(), 15)
            except Exception as exc:  # already closed, or a shared subscription still in use
                log.debug("unsubscribe %s/%s: %r", c.topic, c.subscription, exc)
                await self._quietly(c.close, f"close consumer {c.topic}")
        if self.caps.queue_lifecycle:
            for name in dict.fromkeys(self._topics):
                await self._quietly(functools.partial(self.backend.delete_queue, name), f"delete {name}")

    @staticmethod
    async def _quietly(fn: Callable[[], Awaitable[Any]], what: str) -> None:
        try:
            await asyncio.wait_for(fn(), 30)
        except Exception as exc:
            log.warning("conformance clean-up: %s failed: %r", what, exc)


class Battery:
    """Every case of CONFORMANCE.md; subclass it and set ``broker_name``."""

    broker_name: ClassVar[str]

    @pytest.fixture
    async def ctx(self, broker: Broker, backend: PubSubBackend) -> AsyncIterator[Ctx]:
        c = Ctx(broker, backend)
        try:
            yield c
        finally:
            await c.cleanup()

    # -- 1 ---------------------------------------------------------------------

    async def test_01_publish_then_subscribe_earliest(self, backend: PubSubBackend, ctx: Ctx) -> None:
        # Without replay, payloads and properties are still checked (subscribing
        # first); only "sent before the subscription existed" is skipped.
        replay = ctx.caps.replay_from_earliest
        n = count(100)
        name = ctx.topic("earliest")
        if not replay:
            c = await ctx.consumer(name, ctx.sub("late"))
        p = await ctx.producer(name)
        sent = {
            i: (
                Item(n=i, key=f"k{i % 3}", text=f"payload {i} ✓ é 漢字"),
                {"n": str(i), "case": "1", "note": "héllo ✓", "empty": ""},
            )
            for i in range(n)
        }
        for value, props in sent.values():
            await p.send(value, props)
        await p.flush()

        if replay:
            c = await ctx.consumer(name, ctx.sub("late"), initial_position="earliest")
        got: dict[int, Message] = {}
        deadline = time.monotonic() + WAIT
        while len(got) < n and time.monotonic() < deadline:
            msg = await recv(c, 1.0)
            if msg is not None:
                got[msg.value().n] = msg
                await c.acknowledge(msg)
        assert not set(sent) - set(got), missing_text(set(sent) - set(got), n)
        for i, msg in got.items():
            assert msg.value() == sent[i][0]
            assert msg.properties() == sent[i][1], f"message {i}: properties changed"
            assert msg.topic == name
        if not replay:
            pytest.skip(
                "case 1: payloads and properties held (subscribed first); publish-before-subscribe "
                "not checked: backend Capabilities.replay_from_earliest is False"
            )

    # -- 2 ---------------------------------------------------------------------

    async def test_02_codec_round_trip(self, backend: PubSubBackend, ctx: Ctx) -> None:
        name = ctx.topic("codec")
        c = await ctx.consumer(name, ctx.sub("codec"), Rich)
        p = await ctx.producer(name, Rich)
        rich = Rich(
            id="rich-1",
            count=-7,
            ratio=0.25,
            flag=True,
            text="unicode: ✓ é 漢字 😀 \u0000 \n\t \"quotes\" \\",
            blob=bytes(range(256)),
            inners=[Inner("a", ["x", "ÿ"]), Inner("b", [], note="n")],
            matrix=[[1, 2], [], [3]],
            table={"one": [1], "none": [], "ü": [2, 3]},
            by_name={"k": Inner("k", ["t"])},
        )
        empty = Rich(id="")
        await p.send(rich)
        await p.send(empty)
        await p.flush()

        by_id: dict[str, Message] = {}
        for _ in range(2):  # in either order: ordering is a capability of its own
            msg = await recv(c, WAIT)
            assert msg is not None, f"codec messages never arrived (got {sorted(by_id)})"
            await c.acknowledge(msg)
            by_id[msg.value().id] = msg
        assert set(by_id) == {"rich-1", ""}, sorted(by_id)
        m1, m2 = by_id["rich-1"], by_id[""]
        assert m1.value() == rich
        assert m2.value() == empty

        wire = json.loads(m1.data())
        assert "optional" not in wire and "optional_inner" not in wire, "None fields must be absent"
        assert "note" not in wire["inners"][0], "None field of a nested dataclass must be absent"
        assert wire["inners"][1]["note"] == "n"
        wire_empty = json.loads(m2.data())
        for key, value in {"id": "", "count": 0, "ratio": 0.0, "flag": False, "text": "",
                           "blob": "", "inners": [], "matrix": [], "table": {}, "by_name": {}}.items():
            assert wire_empty.get(key, "<absent>") == value, f"empty field {key} must be written"

        size = 1024 * 1024
        if ctx.caps.max_message_size < size:
            pytest.skip(
                f"case 2, 1 MiB message: backend Capabilities.max_message_size is "
                f"{ctx.caps.max_message_size}"
            )
        # Fill the text so that the encoded message is exactly 1 MiB.
        from trustgraph_schema import codec

        big = Rich(id="big", inners=[Inner("z", ["é"])])
        big.text = "x" * (size - len(codec.encode(big)))
        assert len(codec.encode(big)) == size
        await p.send(big, {"size": str(size)})
        await p.flush()
        m3 = await recv(c, WAIT)
        assert m3 is not None, "1 MiB message never arrived"
        await c.acknowledge(m3)
        assert len(m3.data()) == size
        assert m3.value() == big
        assert m3.properties() == {"size": str(size)}

    # -- 3 ---------------------------------------------------------------------

    async def test_03_topic_isolation(self, backend: PubSubBackend, ctx: Ctx) -> None:
        # Names that are prefixes of each other, same subscription name on both.
        ta, tb = ctx.topic("iso"), ctx.topic("iso.x")
        sub = ctx.sub("iso")
        ca = await ctx.consumer(ta, sub)
        cb = await ctx.consumer(tb, sub)
        pa = await ctx.producer(ta)
        pb = await ctx.producer(tb)
        n = count(20)
        a_ids, b_ids = set(range(n)), set(range(1000, 1000 + n))
        for i in range(n):  # interleaved, so a leak shows before either side is complete
            await pa.send(Item(n=i))
            await pb.send(Item(n=1000 + i))
        await pa.flush()
        await pb.flush()

        got_a, got_b = await asyncio.gather(receive_ids(ca, a_ids), receive_ids(cb, b_ids))
        late_a, late_b = await asyncio.gather(receive_quiet(ca), receive_quiet(cb))
        got_a.update(m.value().n for m in late_a)
        got_b.update(m.value().n for m in late_b)
        assert set(got_a) == a_ids, f"{ta}: missing {a_ids - set(got_a)}, foreign {set(got_a) - a_ids}"
        assert set(got_b) == b_ids, f"{tb}: missing {b_ids - set(got_b)}, foreign {set(got_b) - b_ids}"

        # Names no broker may carry are refused with a message naming them.
        good = ctx.topic("names")
        for bad_sub in ("", "a/b", "a+b", "#", "$share", "with space", "a:b"):
            with pytest.raises(BadTopicError) as err:
                await backend.create_consumer(good, bad_sub, Item)
            assert "subscription" in str(err.value) and repr(bad_sub) in str(err.value), str(err.value)
        for bad_topic in ("q1/tg/conformance/a/b", "q1/tg/con formance/x", "q1/tg/conformance/a:b",
                          "tg/conformance/x"):
            with pytest.raises(BadTopicError) as err:
                await backend.create_producer(bad_topic, Item)
            assert bad_topic in str(err.value), str(err.value)
            with pytest.raises(BadTopicError) as err:
                await backend.create_consumer(bad_topic, ctx.sub("bad"), Item)
            assert bad_topic in str(err.value), str(err.value)

    # -- 4 ---------------------------------------------------------------------

    async def test_04_competing_consumers(self, broker: Broker, backend: PubSubBackend, ctx: Ctx) -> None:
        ctx.require("consumer_groups", "4")
        n = count(1000)
        name, sub = ctx.topic("compete"), ctx.sub("compete")
        consumers = [await ctx.consumer(name, sub, prefetch=10) for _ in range(3)]
        p = await ctx.producer(name)
        for i in range(n):
            await p.send(Item(n=i))
            if i % 10 == 9:
                # Bursts of ten: a batching client (Pulsar) dispatches a batch as one
                # unit, so one burst of 100 could rightly go to a single consumer.
                await p.flush()
        await p.flush()

        per: list[Counter[int]] = [Counter() for _ in consumers]
        union: set[int] = set()
        done = asyncio.Event()
        deadline = time.monotonic() + WAIT * 2

        async def work(k: int, c: BackendConsumer) -> None:
            while not done.is_set() and time.monotonic() < deadline:
                msg = await recv(c, 0.5)
                if msg is None:
                    continue
                v = msg.value().n
                per[k][v] += 1
                await asyncio.sleep(0.001)  # a little work, so one consumer cannot take it all
                await c.acknowledge(msg)
                union.add(v)
                if len(union) >= n:
                    done.set()

        await asyncio.gather(*(work(k, c) for k, c in enumerate(consumers)))
        for k, late in enumerate(await asyncio.gather(*(receive_quiet(c) for c in consumers))):
            per[k].update(m.value().n for m in late)

        total: Counter[int] = sum(per, Counter())
        missing = set(range(n)) - set(total)
        assert not missing, missing_text(missing, n)
        twice = {k: v for k, v in total.items() if v > 1}
        if twice and DUPLICATES_UNDER_LOAD in broker.quirks:
            pytest.xfail(f"broker quirk {DUPLICATES_UNDER_LOAD}: {len(twice)} handled twice")
        assert not twice, f"{len(twice)} messages handled more than once, e.g. {list(twice.items())[:10]}"
        shares = [sum(c.values()) for c in per]
        assert all(shares), f"load was not split between the 3 consumers: {shares}"

    # -- 5 ---------------------------------------------------------------------

    async def test_05_fan_out(self, backend: PubSubBackend, ctx: Ctx) -> None:
        n = count(200)
        name = ctx.topic("fanout")
        c1 = await ctx.consumer(name, ctx.sub("fan1"))
        c2 = await ctx.consumer(name, ctx.sub("fan2"))
        p = await ctx.producer(name)
        for i in range(n):
            await p.send(Item(n=i))
        await p.flush()
        want = set(range(n))
        got1, got2 = await asyncio.gather(receive_ids(c1, want), receive_ids(c2, want))
        assert not want - set(got1), "subscription 1: " + missing_text(want - set(got1), n)
        assert not want - set(got2), "subscription 2: " + missing_text(want - set(got2), n)

    # -- 6 ---------------------------------------------------------------------

    async def test_06_nack_means_redelivery(self, backend: PubSubBackend, ctx: Ctx) -> None:
        n = 10
        name = ctx.topic("nack")
        c = await ctx.consumer(name, ctx.sub("nack"))
        p = await ctx.producer(name)
        for i in range(n):
            await p.send(Item(n=i))
        await p.flush()

        # Every delivery's redelivery_count, per message, in arrival order.
        counts: dict[int, list[int]] = {}
        deadline = time.monotonic() + WAIT * 2
        while sum(len(cs) >= 2 for cs in counts.values()) < n and time.monotonic() < deadline:
            msg = await recv(c, 1.0)
            if msg is None:
                continue
            v = msg.value().n
            counts.setdefault(v, []).append(msg.redelivery_count)
            if len(counts[v]) == 1:
                await c.negative_acknowledge(msg)
            else:
                await c.acknowledge(msg)
        missing = {i for i in range(n) if len(counts.get(i, ())) < 2}
        assert not missing, "after a nack: " + missing_text(missing, n)
        # Counts on every backend, Capabilities.redelivery_count or not: that
        # capability is about counts surviving a change of consumer (Kafka
        # counts in the consumer, MQTT a crash only once).  Here one consumer
        # keeps its connection throughout (a lost one fails the case with
        # ConnectionLostError), so each message was delivered exactly once
        # before its redelivery: 0, then 1.
        first = {v: cs[0] for v, cs in sorted(counts.items())}
        again = {v: cs[1] for v, cs in sorted(counts.items())}
        assert all(r == 0 for r in first.values()), f"redelivery_count on first deliveries: {first}"
        assert all(r == 1 for r in again.values()), (
            f"redelivery_count on the redelivery after one nack: {again}"
        )
        later = {v: cs[2:] for v, cs in counts.items() if cs[2:]}
        assert all(r >= 1 for cs in later.values() for r in cs), (
            f"deliveries after the redelivery counted as first deliveries: {later}"
        )

    # -- 7 ---------------------------------------------------------------------

    async def test_07_poison_message(self, backend: PubSubBackend, ctx: Ctx) -> None:
        """The handler's poison is attempted exactly ``max_redeliveries + 1`` times.

        ``Consumer`` nacks a failed message until its ``redelivery_count``
        reaches ``max_redeliveries``, then dead-letters it with
        ``x-dlq-deliveries`` = count + 1, and dead-letters one whose count is
        already above the limit without running the handler.  With the
        backend's counts exact, the handler sees counts 0, 1, ... max and
        nothing after the dead-letter copy.
        """
        from trustgraph_pubsub.consumer import Consumer

        max_redeliveries = 3
        attempts = max_redeliveries + 1
        name, sub = ctx.topic("poison"), ctx.sub("poison")
        dlq = ctx.track(naming.dead_letter_topic(name))
        position: InitialPosition = "earliest" if ctx.caps.replay_from_earliest else "latest"
        dlq_consumer = await ctx.consumer(dlq, ctx.sub("dlq"), None, initial_position=position)

        poison_n = 10_000
        calls: Counter[int] = Counter()
        poison_counts: list[int] = []  # redelivery_count of each attempt at the poison

        async def handler(msg: Message) -> None:
            v = msg.value()
            calls[v.n] += 1
            if v.n == poison_n:
                poison_counts.append(msg.redelivery_count)
                raise RuntimeError(f"always fails: poison {v.n}")

        metrics = consumer_metrics()
        consumer = Consumer(backend, name, sub, Item, handler, max_redeliveries=max_redeliveries,
                            metrics=metrics)
        await consumer.start()
        ctx.defer(consumer.stop)

        good = count(30)
        p = await ctx.producer(name)
        raw = await ctx.producer(name, None)
        undecodable = b"\xff\xfe not json {"
        for i in range(good // 3):
            await p.send(Item(n=i))
        await p.flush()
        await raw.send(undecodable, {"origin": "raw"})
        await raw.flush()
        for i in range(good // 3, 2 * good // 3):
            await p.send(Item(n=i))
        await p.send(Item(n=poison_n), {"origin": "handler", "trace": "t-1"})
        for i in range(2 * good // 3, good):
            await p.send(Item(n=i))
        await p.flush()

        want = set(range(good))
        ok = await wait_until(lambda: want <= calls.keys(), WAIT * 2)
        assert ok, "stream behind the poison stalled: " + missing_text(want - calls.keys(), good)

        dead: list[Message] = []
        attempts_at_copy: int | None = None  # handler attempts when the poison's copy arrived
        deadline = time.monotonic() + WAIT
        while len(dead) < 2 and time.monotonic() < deadline:
            msg = await recv(dlq_consumer, 1.0)
            if msg is not None:
                dead.append(msg)
                if msg.properties().get("origin") == "handler" and attempts_at_copy is None:
                    attempts_at_copy = calls[poison_n]
                await dlq_consumer.acknowledge(msg)
        dead.extend(await receive_quiet(dlq_consumer))
        by_origin = {m.properties().get("origin"): m for m in dead}
        assert set(by_origin) == {"raw", "handler"}, (
            f"dead-letter topic {dlq} holds {[m.properties() for m in dead]}"
        )
        assert len(dead) == 2, f"{len(dead)} dead letters for 2 poison messages"

        raw_dead, handler_dead = by_origin["raw"], by_origin["handler"]
        assert raw_dead.data() == undecodable
        assert json.loads(handler_dead.data()) == {"n": poison_n, "key": "", "text": ""}
        assert handler_dead.properties()["trace"] == "t-1", "original properties must be kept"
        assert "always fails" in handler_dead.properties()["x-dlq-error"]
        assert handler_dead.properties()["x-dlq-error-type"] == "RuntimeError"
        for m in (raw_dead, handler_dead):
            props = m.properties()
            for key in ("x-dlq-error", "x-dlq-error-type", "x-dlq-topic", "x-dlq-subscription",
                        "x-dlq-deliveries"):
                assert props.get(key), f"dead letter lacks {key}: {props}"
            assert props["x-dlq-topic"] == name
            assert props["x-dlq-subscription"] == sub
            assert int(props["x-dlq-deliveries"]) >= 1

        # The handler never runs after the dead-letter copy exists.
        assert attempts_at_copy == calls[poison_n], (
            f"handler ran on the poison after its dead-letter copy: {attempts_at_copy} attempts "
            f"when the copy arrived, {calls[poison_n]} in the end"
        )
        tried = calls[poison_n]
        raw_deliveries = int(raw_dead.properties()["x-dlq-deliveries"])
        deliveries = int(handler_dead.properties()["x-dlq-deliveries"])
        seen = f"attempts {tried}, counts seen {poison_counts}, x-dlq-deliveries {deliveries}"
        assert 1 <= tried <= attempts, f"handler saw the poison {tried} times ({seen})"
        assert tried == len(poison_counts)
        # x-dlq-deliveries: count + 1 of the delivery dead-lettered, which is
        # never below the limit (a count above it is dead-lettered at once).
        assert deliveries >= attempts, f"dead-lettered before the limit: {seen}"

        lost = reconnects(metrics, backend, name, sub)
        if lost == 0:
            # One backend consumer throughout: counts are exact on every backend,
            # Capabilities.redelivery_count or not (False means a count restarts
            # with a new consumer, Kafka, or counts a crash once, MQTT; neither
            # happens here), so the poison had exactly max_redeliveries + 1 attempts.
            assert poison_counts == list(range(attempts)), (
                f"poison attempts with max_redeliveries={max_redeliveries}: {seen}"
            )
            assert deliveries == attempts, f"x-dlq-deliveries of the handler's poison: {seen}"
            assert raw_deliveries == 1, (
                f"undecodable bytes are dead-lettered on their first delivery, "
                f"x-dlq-deliveries {raw_deliveries}"
            )
            return
        # The Consumer lost its connection and recreated its backend consumer:
        # only bounds hold.  Where the broker keeps the count
        # (Capabilities.redelivery_count), it may also count deliveries the lost
        # consumer held, never fewer, so counts only grow.  Where it is False,
        # a new backend consumer may count from zero again.
        log.warning("case 7: the Consumer on %s reconnected %.0f times: %s", name, lost, seen)
        if ctx.caps.redelivery_count:
            assert all(a < b for a, b in itertools.pairwise(poison_counts)), (
                f"counts across {lost:.0f} reconnects must only grow: {seen}"
            )

    # -- 8 ---------------------------------------------------------------------

    async def test_08_close_with_work_in_flight(self, backend: PubSubBackend, ctx: Ctx) -> None:
        """In turn on one topic, concurrently on another, each checked by a new consumer.

        The two halves use separate topics so that a broker defect that only
        concurrent closes trigger (a declared quirk) cannot hide the result of
        the in-turn half.
        """
        n = count(100)
        k = max(2, n // 5)
        acked: set[int] = set()

        async def take(c: BackendConsumer, how_many: int, ack_some: bool, within: float) -> int:
            """Receive up to ``how_many``; ack every other one if asked; leave the rest unacked."""
            got = 0
            deadline = time.monotonic() + within
            while got < how_many and time.monotonic() < deadline:
                msg = await recv(c, 1.0)
                if msg is None:
                    continue
                got += 1
                if ack_some and got % 2 == 0:
                    await c.acknowledge(msg)
                    acked.add(msg.value().n)
            return got

        async def publish(name: str) -> None:
            p = await ctx.producer(name)
            for i in range(n):
                await p.send(Item(n=i))
            await p.flush()

        async def check(last: BackendConsumer, held: str) -> None:
            want = set(range(n)) - acked
            got = await receive_ids(last, want, WAIT * 2)
            missing = want - set(got)
            assert not missing, (
                f"after closes holding unacked messages ({held}): " + missing_text(missing, n)
            )

        # In turn: each consumer closes holding unacked messages.
        name, sub = ctx.topic("inflight"), ctx.sub("inflight")
        first = await ctx.consumer(name, sub, prefetch=n)
        await publish(name)
        taken_first = await take(first, k, True, WAIT / 2)
        await first.close()
        second = await ctx.consumer(name, sub, prefetch=n)
        taken_second = await take(second, k, False, WAIT / 2)
        await second.close()
        assert taken_first and taken_second, "the first consumers received nothing to hold"
        await check(await ctx.consumer(name, sub, prefetch=n),
                    f"in turn: held {taken_first}, {taken_second}")

        # Concurrently: two consumers hold unacked messages and close together.
        acked.clear()
        name, sub = ctx.topic("inflight-pair"), ctx.sub("inflight-pair")
        pair = [await ctx.consumer(name, sub, prefetch=n) for _ in range(2)]
        await publish(name)
        taken_pair = await asyncio.gather(*(take(c, k // 2, False, WAIT / 2) for c in pair))
        await asyncio.gather(*(c.close() for c in pair))
        assert any(taken_pair), "the pair received nothing to hold"
        try:
            last = await ctx.consumer(name, sub, prefetch=n)
        except PubSubTimeoutError as exc:
            if STUCK_GROUP_AFTER_CONCURRENT_LEAVE in ctx.broker.quirks:
                pytest.xfail(f"broker quirk {STUCK_GROUP_AFTER_CONCURRENT_LEAVE}: {exc}")
            raise
        await check(last, f"concurrently: held {taken_pair}")

    # -- 9 ---------------------------------------------------------------------

    async def test_09_publisher_flush(self, backend: PubSubBackend, ctx: Ctx) -> None:
        from trustgraph_pubsub.publisher import Publisher

        tasks, per_task = 20, count(2000) // 20
        n = tasks * per_task
        name = ctx.topic("flush")
        c = await ctx.consumer(name, ctx.sub("flush"), prefetch=100)

        async def publish(k: int) -> None:
            ids = range(k * per_task, (k + 1) * per_task)
            if k % 2:
                # Publisher: small buffer, so publish() must wait, never drop.
                pub = Publisher(backend, name, Item, max_pending=8)
                await pub.start()
                for i in ids:
                    await pub.publish(Item(n=i))
                await pub.close()
            else:
                prod = await backend.create_producer(name, Item)
                for i in ids:
                    await prod.send(Item(n=i))
                await prod.close()

        await asyncio.wait_for(asyncio.gather(*(publish(k) for k in range(tasks))), WAIT)
        want = set(range(n))
        got = await receive_ids(c, want, WAIT * 2)
        assert not want - set(got), missing_text(want - set(got), n)

    # -- 10 --------------------------------------------------------------------

    async def test_10_ordering(self, backend: PubSubBackend, ctx: Ctx) -> None:
        ctx.require("ordering", "10")
        n = count(300)
        keys = ("a", "b", "c")
        name = ctx.topic("order")
        c = await ctx.consumer(name, ctx.sub("order"), prefetch=100)
        p = await ctx.producer(name)
        for i in range(n):
            key = keys[i % len(keys)]
            await p.send(Item(n=i, key=key), key=key)
        await p.flush()

        arrived: dict[str, list[int]] = {key: [] for key in keys}
        deadline = time.monotonic() + WAIT
        while sum(map(len, arrived.values())) < n and time.monotonic() < deadline:
            msg = await recv(c, 1.0)
            if msg is not None:
                v = msg.value()
                arrived[v.key].append(v.n)
                await c.acknowledge(msg)
        for key in keys:
            expected = [i for i in range(n) if keys[i % len(keys)] == key]
            assert arrived[key] == expected, (
                f"key {key}: {len(arrived[key])} of {len(expected)} arrived; first out of order at "
                f"{next((j for j, (a, b) in enumerate(zip(arrived[key], expected, strict=False)) if a != b), None)}"
            )

    # -- 11 --------------------------------------------------------------------

    @pytest.mark.slow
    @pytest.mark.timeout(900)
    async def test_11_broker_restart(self, broker: Broker, backend: PubSubBackend, ctx: Ctx) -> None:
        if not broker.can_restart:
            pytest.skip(f"case 11: the {broker.name} fixture cannot restart its broker (can_restart)")
        from trustgraph_pubsub.consumer import Consumer
        from trustgraph_pubsub.producer import Producer

        n = count(300, floor=30)
        name, sub = ctx.topic("restart"), ctx.sub("restart")
        received: set[int] = set()

        async def handler(msg: Message) -> None:
            received.add(msg.value().n)

        consumer = Consumer(backend, name, sub, Item, handler, concurrency=4,
                            backoff=Backoff(*FAST_BACKOFF))
        await consumer.start()
        ctx.defer(consumer.stop)
        producer = Producer(backend, name, Item, send_deadline=120.0, backoff=Backoff(*FAST_BACKOFF))
        await producer.start()
        ctx.defer(producer.close)

        sent: list[int] = []
        restart: asyncio.Task[None] | None = None
        t0 = time.monotonic()
        for i in range(n):
            if i == n // 3:
                restart = asyncio.create_task(broker.restart())
            await asyncio.wait_for(producer.send(Item(n=i)), 150)
            sent.append(i)
            await asyncio.sleep(0.01)
        assert restart is not None
        await asyncio.wait_for(restart, 180)
        stream_seconds = time.monotonic() - t0

        # Recovery: messages sent after the restart reach the consumer by itself.
        probe = 1_000_000
        deadline = time.monotonic() + WAIT * 2
        while not any(v >= 1_000_000 for v in received):
            assert time.monotonic() < deadline, "consumer did not recover from the broker restart"
            await asyncio.wait_for(producer.send(Item(n=probe)), 150)
            probe += 1
            await asyncio.sleep(0.2)
        tail = set(range(2_000_000, 2_000_000 + count(50)))
        for i in sorted(tail):
            await asyncio.wait_for(producer.send(Item(n=i)), 150)
        await asyncio.wait_for(producer.flush(), 150)
        await wait_until(lambda: tail <= received, WAIT)
        assert not tail - received, "after the restart: " + missing_text(tail - received, len(tail))

        if not broker.restart_keeps_data:
            await wait_until(lambda: set(sent) <= received, 5.0)
            lost = set(sent) - received
            pytest.skip(
                f"recovery held ({stream_seconds:.1f}s stream); 'at q1 nothing is lost' not checked: "
                f"broker quirk {NOT_PERSISTENT} ({len(lost)} of {n} lost)"
            )
        await wait_until(lambda: set(sent) <= received, WAIT)
        lost = set(sent) - received
        assert not lost, "q1 messages lost across the restart: " + missing_text(lost, n)

    # -- 12 --------------------------------------------------------------------

    async def test_12_cancel_and_drain(self, backend: PubSubBackend, ctx: Ctx) -> None:
        from trustgraph_pubsub.consumer import Consumer

        handler_seconds = 1.0
        name = ctx.topic("cancel")
        sub_a, sub_b = ctx.sub("cancel-a"), ctx.sub("cancel-b")
        slow_n = 500
        started = asyncio.Event()
        handled_a: list[int] = []
        finished: list[int] = []
        seen_b: set[int] = set()

        async def handler_a(msg: Message) -> None:
            v = msg.value()
            if v.n == slow_n:
                started.set()
                await asyncio.sleep(handler_seconds)
                finished.append(v.n)
            handled_a.append(v.n)

        async def handler_b(msg: Message) -> None:
            seen_b.add(msg.value().n)

        consumer_b = Consumer(backend, name, sub_b, Item, handler_b)
        await consumer_b.start()
        ctx.defer(consumer_b.stop)
        consumer_a = Consumer(backend, name, sub_a, Item, handler_a)
        run = asyncio.create_task(consumer_a.run())
        ctx.defer(consumer_a.stop)
        p = await ctx.producer(name)

        # run() subscribes in the background: probe until consumer A handles something.
        probe = 0
        deadline = time.monotonic() + WAIT / 2
        while not handled_a:
            assert not run.done(), f"Consumer.run() ended early: {run}"
            assert time.monotonic() < deadline, "Consumer.run() never started handling"
            await p.send(Item(n=probe, key="probe"))
            await p.flush()
            probe += 1
            await wait_until(lambda: bool(handled_a), 0.5)

        await p.send(Item(n=slow_n))
        await p.flush()
        assert await wait_until(started.is_set, WAIT / 2), "slow message never reached the handler"
        cancelled_at = time.monotonic()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(run, handler_seconds + 30)
        took = time.monotonic() - cancelled_at
        assert finished == [slow_n], "the in-flight handler did not finish before run() ended"
        assert took < handler_seconds + 5, f"cancelled Consumer.run() took {took:.1f}s to end"

        # The other subscription's consumer is untouched.
        after = set(range(1000, 1000 + count(10)))
        for i in after:
            await p.send(Item(n=i))
        await p.flush()
        assert await wait_until(lambda: (after | {slow_n}) <= seen_b, WAIT), (
            "consumer on the other subscription stopped: " + missing_text((after | {slow_n}) - seen_b, len(after) + 1)
        )

        # What A handled was acked: a new consumer on A's subscription gets the rest, not those.
        again = await ctx.consumer(name, sub_a)
        redelivered = await receive_ids(again, after)
        redelivered.update(m.value().n for m in await receive_quiet(again, 2.0))
        assert not after - set(redelivered), "backlog after cancel: " + missing_text(after - set(redelivered), len(after))
        seen_again = set(handled_a) & set(redelivered)
        assert not seen_again, f"messages handled before the cancel came back: {sorted(seen_again)}"

        # An idle consumer (waiting in receive, nothing in flight) ends promptly too.
        idle_handled: list[Message] = []

        async def never(msg: Message) -> None:
            # Recorded, not raised: the Consumer would take an exception for a
            # handler failure and the case would never see it.
            idle_handled.append(msg)

        watched = ReceiveWatch(backend)
        idle = Consumer(cast(PubSubBackend, watched), ctx.topic("cancel-idle"), ctx.sub("idle"),
                        Item, never)
        idle_run = asyncio.create_task(idle.run())
        ctx.defer(idle.stop)
        # Cancel while it waits in receive: the wrapper says when that is.
        assert await wait_event(watched.receiving, WAIT), "idle Consumer never reached receive"
        assert not idle_run.done(), f"idle Consumer.run() ended by itself: {idle_run}"
        cancelled_at = time.monotonic()
        idle_run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(idle_run, 30)
        took = time.monotonic() - cancelled_at
        assert took < 5, f"cancelled idle Consumer.run() took {took:.1f}s to end"
        assert not idle_handled, f"idle consumer handled {idle_handled!r}"

    # -- 13 --------------------------------------------------------------------

    async def test_13_request_response(self, backend: PubSubBackend, ctx: Ctx) -> None:
        from trustgraph_pubsub.request_response import RequestResponse, Responder

        req_t, resp_t = ctx.topic("rr-req"), ctx.topic("rr-resp")
        started: list[tuple[str, int]] = []
        completion: list[tuple[str, int]] = []

        async def stream(req: Req) -> AsyncIterator[Resp]:
            for i in range(req.chunks):
                await asyncio.sleep(0.01)
                yield Resp(n=req.n, caller=req.caller, chunk=i)

        async def handle(req: Req, props: dict[str, str]) -> Resp | AsyncIterator[Resp]:
            if req.chunks:
                return stream(req)
            started.append((req.caller, req.n))
            await asyncio.sleep(req.delay)
            completion.append((req.caller, req.n))
            return Resp(n=req.n, caller=req.caller)

        responder = Responder(backend, req_t, Req, resp_t, Resp, handle,
                              subscription=ctx.sub("svc"), concurrency=64)
        await responder.start()
        ctx.defer(responder.stop)
        callers = {}
        for caller in ("c1", "c2"):
            rr = RequestResponse(backend, req_t, Req, resp_t, Resp)
            await rr.start()
            ctx.defer(rr.stop)
            callers[caller] = rr

        # 200 concurrent requests, two callers, replies out of order.
        n = 200
        jobs = [
            (caller, i, callers[caller].request(Req(n=i, caller=caller, delay=random.uniform(0, 0.05)),
                                                timeout=WAIT))
            for i in range(n // 2) for caller in callers
        ]
        replies = await asyncio.gather(*(job for _, _, job in jobs))
        for (caller, i, _), reply in zip(jobs, replies, strict=True):
            assert (reply.caller, reply.n) == (caller, i), f"{caller} request {i} got {reply}"
        assert sorted(completion) == sorted(started) and completion != started, (
            "the responder answered in arrival order: the case proved nothing"
        )

        # A timeout raises; its late reply is dropped and does not reach the next request.
        rr = callers["c1"]
        with pytest.raises(PubSubTimeoutError):
            await rr.request(Req(n=9001, caller="c1", delay=1.5), timeout=0.5)
        t0 = time.monotonic()
        reply = await rr.request(Req(n=9002, caller="c1", delay=2.0), timeout=WAIT)
        assert time.monotonic() - t0 > 1.5, "the next request did not wait past the late reply"
        assert (reply.caller, reply.n) == ("c1", 9002), f"late reply leaked into the next request: {reply}"

        # Streamed replies end on the final flag.
        chunks = [r async for r in rr.request_stream(Req(n=9100, caller="c1", chunks=5), timeout=WAIT)]
        assert all(r.n == 9100 for r in chunks), chunks
        got = [r.chunk for r in chunks]
        if ctx.caps.ordering:
            assert got == [0, 1, 2, 3, 4], f"stream chunks {got}"
        else:
            assert sorted(got) == [0, 1, 2, 3, 4], f"stream chunks {got}"
        after = await rr.request(Req(n=9200, caller="c1"), timeout=WAIT)
        assert after.n == 9200 and after.chunk == 0, f"after a stream: {after}"

    # -- 14 --------------------------------------------------------------------

    async def test_14_event_loop_liveness(
        self, backend: PubSubBackend, ctx: Ctx, record_property: Callable[[str, object], None]
    ) -> None:
        """Up to three rounds of ~2 s; the case holds when one round's worst lag is
        under 50 ms.  The machine is shared, so the OS may deschedule the whole
        process for a moment; a backend that blocks the loop does it every round.

        The heap the test run built up before this case is frozen (``gc.freeze``)
        for its rounds: a full collection over it is the runner's pause, not the
        backend's.  Seen in CI after 195 tests: one pause of 56-60 ms in each
        round on Kafka; here a million-object ballast gives 49-57 ms on its own,
        and 17 ms without it.
        """
        from trustgraph_pubsub.consumer import Consumer

        gc.collect()
        gc.freeze()
        ctx.defer(_unfreeze)

        rounds, seconds, tick, limit = 3, 2.0, 0.010, 0.050
        name = ctx.topic("live")
        raw = await ctx.consumer(name, ctx.sub("live-raw"), prefetch=1000)
        handled = 0

        async def handler(msg: Message) -> None:
            nonlocal handled
            msg.value()
            handled += 1

        consumer = Consumer(backend, name, ctx.sub("live-sdk"), Item, handler, concurrency=16)
        await consumer.start()
        ctx.defer(consumer.stop)
        p = await ctx.producer(name)
        text = "x" * 1024
        sent = received = 0
        reports: list[str] = []
        worst = p99 = float("inf")

        for attempt in range(1, rounds + 1):
            stop = asyncio.Event()
            lags: list[float] = []
            sent_before, received_before, handled_before = sent, received, handled

            async def ticker(stop: asyncio.Event = stop, lags: list[float] = lags) -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    await asyncio.sleep(tick)
                    lags.append(time.perf_counter() - t0 - tick)

            # User code awaits each call and yields between messages; the backend
            # and the SDK's own loops must yield by themselves.
            async def sender(stop: asyncio.Event = stop) -> None:
                nonlocal sent
                while not stop.is_set():
                    await p.send(Item(n=sent, text=text))
                    sent += 1
                    await asyncio.sleep(0)
                await p.flush()

            async def receiver(stop: asyncio.Event = stop) -> None:
                nonlocal received
                while not stop.is_set():
                    msg = await recv(raw, 0.2)
                    if msg is not None:
                        msg.value()
                        await raw.acknowledge(msg)
                        received += 1
                    await asyncio.sleep(0)

            tasks = [asyncio.create_task(f()) for f in (ticker, sender, receiver)]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

            worst = max(lags)
            p99 = sorted(lags)[int(len(lags) * 0.99)]
            reports.append(
                f"round {attempt}: max lag {worst * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over "
                f"{len(lags)} ticks; sent {sent - sent_before}, raw received "
                f"{received - received_before}, Consumer handled {handled - handled_before}"
            )
            print(f"case 14 event-loop liveness, {reports[-1]}")
            assert sent > sent_before and received > received_before and handled > handled_before, (
                "no traffic moved: " + reports[-1]
            )
            if worst < limit:
                break
        record_property("loop_lag_max_ms", round(worst * 1000, 2))
        record_property("loop_lag_p99_ms", round(p99 * 1000, 2))
        record_property("liveness_rounds", len(reports))
        assert worst < limit, f"event loop lagged > {limit * 1000:.0f} ms in every round: " + "; ".join(reports)

    # -- 15 --------------------------------------------------------------------

    async def test_15_queue_lifecycle(self, backend: PubSubBackend, ctx: Ctx) -> None:
        ctx.require("queue_lifecycle", "15")
        name = ctx.topic("lifecycle")
        sub = ctx.sub("lc")
        assert not await backend.queue_exists(name, sub)
        await backend.create_queue(name, sub)
        assert await backend.queue_exists(name, sub)
        await backend.ensure_queue(name, sub)
        await backend.ensure_queue(name, sub)
        assert await backend.queue_exists(name, sub)

        # The created queue holds what is published before anyone consumes.
        p = await ctx.producer(name)
        await p.send(Item(n=1))
        await p.flush()
        c = await ctx.consumer(name, sub)
        got = await receive_ids(c, {1})
        assert set(got) == {1}, "a message published into a created queue was not kept"

        # Delete with a subscription and a backlog: nothing is left behind.
        for i in range(2, 7):
            await p.send(Item(n=i))
        await p.flush()
        await recv(c, 5.0)  # hold one unacked
        await c.close()
        await backend.delete_queue(name, sub)
        assert not await backend.queue_exists(name, sub)
        fresh = await ctx.consumer(name, sub)
        await p.send(Item(n=100))
        await p.flush()
        got = await receive_ids(fresh, {100})
        got.update(m.value().n for m in await receive_quiet(fresh))
        assert set(got) == {100}, f"the deleted queue's backlog came back: {sorted(got)}"

        # Deleting the topic deletes every subscription on it.
        other = ctx.sub("lc2")
        await backend.ensure_queue(name, other)
        assert await backend.queue_exists(name, other)
        await fresh.close()
        await backend.delete_queue(name)
        assert not await backend.queue_exists(name, sub)
        assert not await backend.queue_exists(name, other)

    # -- 16 --------------------------------------------------------------------

    async def test_16a_bad_topic_names(self, backend: PubSubBackend, ctx: Ctx) -> None:
        q = f"conf-{ctx.uid}-bad"
        cases = {
            f"q9/tg/conformance/{q}": "qos",
            f"q1//conformance/{q}": "tenant is empty",
            f"q1/tg/conformance/{q}+x": "wildcard",
            f"q1/tg/#/{q}": "wildcard",
        }
        for bad, says in cases.items():
            with pytest.raises(BadTopicError) as err:
                await backend.create_producer(bad, Item)
            assert bad in str(err.value) and says in str(err.value), str(err.value)
            with pytest.raises(BadTopicError) as err:
                await backend.create_consumer(bad, ctx.sub("bad"), Item)
            assert bad in str(err.value) and says in str(err.value), str(err.value)

    async def test_16b_unknown_backend(self) -> None:
        with pytest.raises(ConfigurationError) as err:
            get_pubsub(pubsub_backend="no-such-broker")
        text = str(err.value)
        assert "no-such-broker" in text, text
        for known in available_backends():
            assert known in text, f"{known} not listed: {text}"

    async def test_16c_refused_connection(self, broker: Broker, ctx: Ctx) -> None:
        try:
            overrides = broker.refused_config()
        except NotImplementedError:
            pytest.skip(f"{broker.name} fixture gives no refused_config(): no network address to refuse")
        for first in ("producer", "consumer"):
            b = broker.make_backend(**overrides)
            try:
                t0 = time.monotonic()
                with pytest.raises(BrokerConnectionError) as err:
                    async with asyncio.timeout(40):
                        if first == "producer":
                            await b.create_producer(ctx.topic("refused"), Item)
                        else:
                            await b.create_consumer(ctx.topic("refused"), ctx.sub("refused"), Item)
                took = time.monotonic() - t0
            finally:
                await b.close()
            text = str(err.value)
            assert any(_mentions(text, v) for v in overrides.values()), (
                f"refused connection error names no address of {overrides}: {text}"
            )
            assert took < 30, f"refused connection took {took:.1f}s to be reported"

    async def test_16d_bad_credentials(self, broker: Broker, ctx: Ctx) -> None:
        overrides = broker.bad_credentials_config()
        if overrides is None:
            pytest.skip(f"{broker.name} fixture declares no credential check (bad_credentials_config is None)")
        secrets = [str(overrides[f"{broker.name}_{o.name}"])
                   for o in BACKEND_OPTIONS.get(broker.name, ())
                   if o.secret and overrides.get(f"{broker.name}_{o.name}")]
        b = broker.make_backend(**overrides)
        try:
            with pytest.raises(AuthenticationError) as err:
                async with asyncio.timeout(40):
                    await b.create_producer(ctx.topic("auth"), Item)
            shown = [str(err.value), repr(err.value), repr(b)]
        finally:
            await b.close()
        text = str(err.value)
        assert any(w in text.lower() for w in ("credential", "auth", "password", "token", "user")), text
        for secret in secrets:
            for s in shown:
                assert secret not in s, "a secret leaked into an error message or repr"


    # -- the Consumer's plain calls (not a CONFORMANCE.md case) -------------------

    @pytest.mark.parametrize(("nowait", "concurrency"), [(True, 1), (True, 8), (False, 8)],
                             ids=["plain-calls", "plain-calls-concurrent", "awaited"])
    async def test_held_messages_cost_no_awaited_receive_or_ack(
        self, backend: PubSubBackend, ctx: Ctx, nowait: bool, concurrency: int
    ) -> None:
        """A backend consumer with ``receive_nowait``/``acknowledge_nowait`` gives
        ``Consumer`` held messages with no coroutine each: 300 published before it
        starts take few awaited receives and no awaited ack.  Without them (hidden,
        or a backend that has none) every message goes through the coroutines."""
        from trustgraph_pubsub.consumer import Consumer

        name, sub = ctx.topic("nowait"), ctx.sub("nowait")
        first = await backend.create_consumer(name, sub, Item)  # the subscription
        has_plain = hasattr(first, "receive_nowait") and hasattr(first, "acknowledge_nowait")
        await first.close()
        if nowait and not has_plain:
            pytest.skip(f"{backend.name} consumers have no receive_nowait/acknowledge_nowait")
        p = await ctx.producer(name)
        for i in range(300):
            await p.send(Item(i))
        await p.flush()
        handled: set[int] = set()
        everything = asyncio.Event()

        async def handle(msg: Message) -> None:
            handled.add(msg.value().n)
            if len(handled) == 300:
                everything.set()

        watched = ReceiveWatch(backend, nowait=nowait)
        c = Consumer(cast(PubSubBackend, watched), name, sub, Item, handle, concurrency=concurrency)
        await c.start()
        ctx.defer(c.stop)
        assert await wait_event(everything, WAIT), missing_text(set(range(300)) - handled, 300)
        await c.stop()
        if nowait:
            assert watched.awaited["acknowledge"] == 0, watched.awaited
            assert watched.awaited["receive"] <= 75, watched.awaited
        else:
            assert watched.awaited["acknowledge"] >= 300, watched.awaited
            assert watched.awaited["receive"] >= 300, watched.awaited


    # -- the Producer's plain call (not a CONFORMANCE.md case) -------------------

    @pytest.mark.parametrize("nowait", [True, False], ids=["plain-call", "awaited"])
    async def test_sends_cost_few_awaited_backend_sends(
        self, backend: PubSubBackend, ctx: Ctx, nowait: bool
    ) -> None:
        """A backend producer with ``send_nowait`` takes ``Producer.send``'s messages
        with no coroutine each: 640 sends await the backend's ``send`` only when
        it declines (a yield to the loop is due every 64 calls), and another task
        still gets its turns.  Without it (hidden, or a backend that has none)
        every send is awaited.  Either way every message arrives with its
        properties; keys and no keys, properties and none, take both paths."""
        from trustgraph_pubsub.producer import Producer

        name = ctx.topic("send-nowait")
        c = await ctx.consumer(name, ctx.sub("send-nowait"))
        first = await ctx.producer(name)
        has_plain = hasattr(first, "send_nowait")
        if nowait and not has_plain:
            pytest.skip(f"{backend.name} producers have no send_nowait")
        watched = SendWatch(backend, nowait=nowait)
        p = Producer(cast(PubSubBackend, watched), name, Item)
        ctx.defer(p.close)
        await p.start()
        async with LoopTurns() as turns:
            for i in range(640):
                props = {"n": str(i)} if i % 2 else None
                await p.send(Item(n=i), props, key=f"k{i % 3}" if i % 3 == 0 else None)
            sending_turns = turns.count
        await p.flush()
        got: dict[int, Message] = {}
        deadline = time.monotonic() + WAIT
        while len(got) < 640 and time.monotonic() < deadline:
            msg = await recv(c, 1.0)
            if msg is not None:
                got[msg.value().n] = msg
                await c.acknowledge(msg)
        assert len(got) == 640, missing_text(set(range(640)) - set(got), 640)
        for i, msg in got.items():
            assert msg.properties() == ({"n": str(i)} if i % 2 else {}), f"message {i}"
        if nowait:
            assert watched.awaited <= 40, watched.awaited
        else:
            assert watched.awaited >= 640, watched.awaited
        assert sending_turns >= 9, sending_turns


def _mentions(text: str, value: Any) -> bool:
    """Whether an error text names a configured address: host, port or URL without scheme,
    as a whole token (so port ``41234`` is not found inside ``141234``)."""
    s = str(value)
    for c in {s, s.split("://", 1)[-1]}:
        if c and re.search(rf"(?<![0-9A-Za-z]){re.escape(c)}(?![0-9A-Za-z])", text):
            return True
    return False


async def _unfreeze() -> None:
    """Give the heap frozen by case 14 back to the collector."""
    gc.unfreeze()
