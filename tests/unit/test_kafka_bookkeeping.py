"""The Kafka consumer's delivery bookkeeping, with a stand-in for aiokafka's client.

No broker: what is checked here is what the consumer keeps in memory between a
fetch, its messages' acks and a commit round (the broker side is proven in
``tests/backends/test_kafka.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from trustgraph_pubsub.backend import _UNDECODED
from trustgraph_pubsub.backends.kafka.config import COMMIT_EVERY
from trustgraph_pubsub.backends.kafka.consumer import KafkaConsumer, _Partition
from trustgraph_pubsub.errors import MessageDecodeError
from trustgraph_schema.errors import SchemaError


class _Client:
    def __init__(self, records: list[Any]) -> None:
        self.records, self.commits = records, []  # type: ignore[var-annotated]

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, list[Any]]:
        out, self.records = {TP: self.records} if self.records else {}, []
        return out

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))


TP = TopicPartition("t", 0)


def _consumer(
    n: int, *, offsets: list[int] | None = None, values: list[bytes | None] | None = None,
    schema: type[Any] | None = None,
) -> tuple[KafkaConsumer, _Client]:
    offsets = list(range(n)) if offsets is None else offsets
    values = [b"x"] * len(offsets) if values is None else values
    records = [ConsumerRecord("t", 0, off, 0, 0, None, v, None, 0, len(v or b""), [])
               for off, v in zip(offsets, values, strict=True)]
    backend = SimpleNamespace(connect_timeout=5.0)
    kc = KafkaConsumer(backend, "q1/tg/x/y", "t", "s", "g", schema, "earliest")  # type: ignore[arg-type]
    kc._client = client = _Client(records)
    kc._parts[TP] = _Partition(TP, committed=0, topic="q1/tg/x/y", schema=schema)  # where the group starts
    return kc, client


@dataclass
class _Point:
    n: int


async def test_a_fetch_with_offset_gaps_commits_past_them() -> None:
    # Compaction and transaction markers leave gaps: an offset never
    # delivered must not hold the commit point back.
    kc, client = _consumer(0, offsets=[0, 1, 3, 4, 7])
    await kc._fetch()
    msgs = [kc.receive_nowait() for _ in range(5)]
    assert [m.handle[1] for m in msgs if m is not None] == [0, 1, 3, 4, 7]
    for m in msgs:
        assert m is not None
        kc.acknowledge_nowait(m)
    await kc._commit()
    assert client.commits == [{TP: 8}]


async def test_records_are_decoded_as_handed_out_and_a_bad_one_raises_from_value() -> None:
    kc, _ = _consumer(0, offsets=[0, 1, 2], values=[b'{"n": 3}', b'{"n": "three"}', None],
                      schema=_Point)
    await kc._fetch()
    good, bad, empty = (kc.receive_nowait() for _ in range(3))
    assert good is not None and bad is not None and empty is not None
    assert good._value == _Point(3)  # decoded on receipt, not when first asked
    assert bad._value is _UNDECODED and empty._value is _UNDECODED
    assert good.value() == _Point(3) and good.data() == b'{"n": 3}' and good.topic == "q1/tg/x/y"
    for m, data in ((bad, b'{"n": "three"}'), (empty, b"")):
        with pytest.raises(MessageDecodeError, match="q1/tg/x/y .*_Point"):
            m.value()
        assert m.data() == data and m.redelivery_count == 0
    with pytest.raises(MessageDecodeError) as err:
        bad.value()  # again: nothing bad was cached
    assert err.value.path == "n"


async def test_a_schema_that_is_not_one_raises_from_value() -> None:
    kc, _ = _consumer(1, schema=int)
    await kc._fetch()
    m = kc.receive_nowait()
    assert m is not None and m.data() == b"x"
    with pytest.raises(SchemaError, match="not a dataclass"):
        m.value()


async def test_without_a_schema_the_value_is_the_bytes() -> None:
    kc, _ = _consumer(0, offsets=[0, 1], values=[b"\xff raw", None])
    await kc._fetch()
    raw, empty = kc.receive_nowait(), kc.receive_nowait()
    assert raw is not None and empty is not None
    assert raw.value() == b"\xff raw" and empty.value() == b"" and empty.data() == b""


async def test_every_commit_every_acks_wake_the_committer_even_when_nothing_moved() -> None:
    n = 2 * COMMIT_EVERY + 1
    kc, client = _consumer(n)
    await kc._fetch()
    msgs = [kc.receive_nowait() for _ in range(n)]
    assert all(m is not None for m in msgs) and kc.receive_nowait() is None
    held, rest = msgs[0], msgs[1:]
    for m in rest[:COMMIT_EVERY]:
        kc.acknowledge_nowait(m)
    assert kc._wake.is_set()
    kc._wake.clear()
    await kc._commit()  # offset 0 is still being handled: nothing to commit
    assert client.commits == []
    for m in rest[COMMIT_EVERY:]:
        kc.acknowledge_nowait(m)
    assert kc._wake.is_set()  # the round re-armed the wake
    kc.acknowledge_nowait(held)
    await kc._commit()
    assert client.commits == [{TP: n}]


async def test_a_nack_drops_the_partitions_buffered_records_and_redelivers_from_its_offset() -> None:
    kc, client = _consumer(5)
    await kc._fetch()
    first, second = kc.receive_nowait(), kc.receive_nowait()
    assert first is not None and second is not None

    seeks: list[tuple[Any, int]] = []
    kc._client.seek = lambda tp, off: seeks.append((tp, off))  # type: ignore[attr-defined]
    await kc.negative_acknowledge(first)
    assert seeks == [(TP, 0)] and kc.receive_nowait() is None  # the rest of the batch is gone
    client.records = [ConsumerRecord("t", 0, i, 0, 0, None, b"x", None, 0, 1, []) for i in range(5)]
    await kc._fetch()
    again = kc.receive_nowait()
    assert again is not None and again.handle[1] == 0 and again.redelivery_count == 1
    nxt = kc.receive_nowait()  # offset 1 is still being handled: skipped, then 2
    assert nxt is not None and nxt.handle[1] == 2
