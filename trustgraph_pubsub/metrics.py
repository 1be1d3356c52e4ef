"""Metrics for the resilient clients: Prometheus when installed, otherwise nothing.

``prometheus_client`` is an optional dependency (the ``metrics`` extra).  When
it is importable, ``Metrics`` registers these metrics (prefix
``trustgraph_pubsub_``):

=================================  =========================================
``messages_total``                 messages handed to a consumer's handler
``errors_total``                   handler exceptions and undecodable messages
``redeliveries_total``             messages nacked for redelivery
``dead_lettered_total``            messages moved to a dead-letter topic
``dropped_total``                  replies nobody waited for (late replies)
``reconnects_total``               consumers recreated after a lost connection
``sent_total``                     messages sent by a ``Producer``
``handler_seconds``                handler latency (histogram): from taking
                                   a message (its decode too) to the handler's return
=================================  =========================================

Labels are ``topic``, ``subscription`` and ``backend`` only (``sent_total``
has ``topic`` and ``backend``): never a secret, never a message id.

The hot path counts in plain Python ints, not in ``prometheus_client``
objects: a Prometheus ``inc()`` takes a lock and costs about a microsecond,
a histogram ``observe()`` more, and a consumer does both per message.  Each
label set has one cell of ints (``bind``/``bind_producer`` return a handle on
it, so there is no label lookup per message); one custom collector per
registry turns the cells into ordinary counter and histogram samples when
Prometheus scrapes (no ``_created`` samples).  Cells are written by the event
loop that runs the client and read whole by the scrape, which may run in
another thread and needs no lock for that.  Two loops in two threads sharing
one label set add to the same cell; CPython (with its GIL) never switches
threads in the middle of an ``x += 1`` on a slot, so no count is lost.  Cells
live as long as their registry, as Prometheus's own labelled children do,
unless released: ``Metrics.release(topic, subscription, backend)`` drops a
consumer label set (its samples disappear from the next scrape, as with
``prometheus_client``'s ``.remove(*labelvalues)``).  ``Consumer`` releases
its label set when an ephemeral subscription's consumer stops, so a process
that makes many short-lived ``RequestResponse`` callers (each with its own
``rr-<uuid>`` subscription) does not grow its metrics forever.  Handles
bound before the release keep counting into a detached cell nobody reads.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Iterator
from typing import Any, cast

__all__ = ["BoundMetrics", "Metrics", "ProducerMetrics", "default_metrics", "prometheus_available"]

_PREFIX = "trustgraph_pubsub"
_LABELS = ("topic", "subscription", "backend")
_PRODUCER_LABELS = ("topic", "backend")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: consumer counters: (attribute on the cell, metric name without ``_total``, help).
_COUNTERS = (
    ("messages", "messages", "Messages handed to a handler"),
    ("errors", "errors", "Handler exceptions and undecodable messages"),
    ("redeliveries", "redeliveries", "Messages nacked for redelivery"),
    ("dead_lettered", "dead_lettered", "Messages moved to a dead-letter topic"),
    ("dropped", "dropped", "Replies nobody waited for"),
    ("reconnects", "reconnects", "Consumers recreated after a lost connection"),
)

_prom: Any
try:
    import prometheus_client as _prom
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    #: the histogram's ``le`` label values, spelled as prometheus_client spells them
    _BOUNDS = [str(cast(Any, floatToGoString)(b)) for b in _BUCKETS] + ["+Inf"]
except ImportError:  # pragma: no cover - the metrics extra is not installed
    _prom = None


def prometheus_available() -> bool:
    return _prom is not None


class _ConsumerCells:
    """One consumer label set's counts; ``buckets[i]`` counts latencies in bucket ``i`` only."""

    __slots__ = (
        "buckets", "dead_lettered", "dropped", "errors", "messages", "reconnects",
        "redeliveries", "seconds",
    )

    def __init__(self) -> None:
        self.messages = 0
        self.errors = 0
        self.redeliveries = 0
        self.dead_lettered = 0
        self.dropped = 0
        self.reconnects = 0
        self.buckets = [0] * (len(_BUCKETS) + 1)  # the last one is +Inf
        self.seconds = 0.0


class _ProducerCells:
    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0


class BoundMetrics:
    """One consumer's counters, labels already applied.  No-op without Prometheus.

    Each call is a plain integer increment on the label set's cell.
    """

    __slots__ = ("_c",)

    def __init__(self, cells: _ConsumerCells | None = None) -> None:
        # Disabled: a private cell nobody reads, so the hot path has no branch.
        self._c = cells if cells is not None else _ConsumerCells()

    def received(self) -> None:
        self._c.messages += 1

    def error(self) -> None:
        self._c.errors += 1

    def redelivered(self) -> None:
        self._c.redeliveries += 1

    def dead_lettered(self) -> None:
        self._c.dead_lettered += 1

    def dropped(self) -> None:
        self._c.dropped += 1

    def reconnected(self) -> None:
        self._c.reconnects += 1

    def latency(self, seconds: float) -> None:
        c = self._c
        # Prometheus buckets are "less than or equal": bisect_left finds that bucket.
        c.buckets[bisect.bisect_left(_BUCKETS, seconds)] += 1
        c.seconds += seconds

    def inline(self) -> tuple[_ConsumerCells, tuple[float, ...]]:
        """The cells and the histogram's bucket bounds, for a loop that counts inline.

        ``Consumer``'s worker loop does what ``received`` and ``latency`` do
        without calling them: two Python calls per message cost about as
        much as the counting itself.
        """
        return self._c, _BUCKETS


class ProducerMetrics:
    """One producer's send counter.  No-op without Prometheus."""

    __slots__ = ("_c",)

    def __init__(self, cells: _ProducerCells | None = None) -> None:
        self._c = cells if cells is not None else _ProducerCells()

    def sent(self) -> None:
        self._c.sent += 1


class _Collector:
    """Every cell of one registry, exposed as Prometheus counters and a histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the dicts, not the counts
        self._consumers: dict[tuple[str, str, str], _ConsumerCells] = {}
        self._producers: dict[tuple[str, str], _ProducerCells] = {}

    def consumer(self, labels: tuple[str, str, str]) -> _ConsumerCells:
        with self._lock:
            cells = self._consumers.get(labels)
            if cells is None:
                cells = self._consumers[labels] = _ConsumerCells()
            return cells

    def release(self, labels: tuple[str, str, str]) -> bool:
        """Forget one consumer label set; whether it was there."""
        with self._lock:
            return self._consumers.pop(labels, None) is not None

    def producer(self, labels: tuple[str, str]) -> _ProducerCells:
        with self._lock:
            cells = self._producers.get(labels)
            if cells is None:
                cells = self._producers[labels] = _ProducerCells()
            return cells

    def _families(self) -> tuple[list[Any], Any, Any]:
        counters = [
            CounterMetricFamily(f"{_PREFIX}_{name}", doc, labels=_LABELS)
            for _, name, doc in _COUNTERS
        ]
        sent = CounterMetricFamily(
            f"{_PREFIX}_sent", "Messages sent by a producer", labels=_PRODUCER_LABELS
        )
        latency = HistogramMetricFamily(
            f"{_PREFIX}_handler_seconds", "Handler latency", labels=_LABELS
        )
        return counters, sent, latency

    def describe(self) -> Iterator[Any]:
        """The names, without samples, so the registry can refuse a clash at once."""
        counters, sent, latency = self._families()
        yield from counters
        yield sent
        yield latency

    def collect(self) -> Iterator[Any]:
        with self._lock:
            consumers = list(self._consumers.items())
            producers = list(self._producers.items())
        counters, sent, latency = self._families()
        for labels, c in consumers:
            values = list(labels)
            for family, (attr, _, _) in zip(counters, _COUNTERS, strict=True):
                family.add_metric(values, getattr(c, attr))
            running = 0
            cumulative = []
            for bound, n in zip(_BOUNDS, list(c.buckets), strict=True):
                running += n
                cumulative.append((bound, running))
            latency.add_metric(values, cumulative, c.seconds)
        for plabels, p in producers:
            sent.add_metric(list(plabels), p.sent)
        yield from counters
        yield sent
        yield latency


#: one collector per registry: Prometheus refuses to register a name twice.
_collectors: weakref.WeakKeyDictionary[Any, _Collector] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


class Metrics:
    """The metrics, registered once per ``registry`` (default: Prometheus's own).

    Any number of ``Metrics`` on one registry share its collector (and so its
    counts).  Pass a fresh ``prometheus_client.CollectorRegistry`` to isolate
    a test; ``enabled=False`` gives a no-op instance.
    """

    def __init__(self, registry: Any = None, *, enabled: bool = True) -> None:
        self.enabled = enabled and _prom is not None
        self.registry = registry
        self._collector: _Collector | None = None
        if not self.enabled:
            return
        assert _prom is not None
        reg = registry if registry is not None else _prom.REGISTRY
        self.registry = reg
        with _collectors_lock:
            found = _collectors.get(reg)
            if found is None:
                found = _Collector()
                reg.register(found)
                _collectors[reg] = found
        self._collector = found

    def bind(self, topic: str, subscription: str, backend: str) -> BoundMetrics:
        """Counters for one consumer."""
        if self._collector is None:
            return BoundMetrics()
        return BoundMetrics(self._collector.consumer((topic, subscription, backend)))

    def release(self, topic: str, subscription: str, backend: str) -> bool:
        """Drop a consumer label set bound with ``bind``: its samples leave the
        next scrape and its memory is freed.  Whether it was bound; idempotent.

        Handles already bound keep working but count into a detached cell; a
        later ``bind`` of the same labels starts again from zero.
        """
        if self._collector is None:
            return False
        return self._collector.release((topic, subscription, backend))

    def bind_producer(self, topic: str, backend: str) -> ProducerMetrics:
        """The send counter for one producer."""
        if self._collector is None:
            return ProducerMetrics()
        return ProducerMetrics(self._collector.producer((topic, backend)))

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0.0 when absent or disabled); for tests and probes."""
        if not self.enabled:
            return 0.0
        full = f"{_PREFIX}_{name}"
        got = self.registry.get_sample_value(full, labels)
        return float(got) if got is not None else 0.0


_default: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide instance on Prometheus's default registry, made on first use."""
    global _default
    if _default is None:
        _default = Metrics()
    return _default
