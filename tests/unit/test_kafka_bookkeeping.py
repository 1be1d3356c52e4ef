"""The Kafka consumer's delivery bookkeeping, with a stand-in for aiokafka's client.

No broker: what is checked here is what the consumer keeps in memory between a
fetch, its messages' acks and a commit round (the broker side is proven in
``tests/backends/test_kafka.py``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from trustgraph_pubsub.backends.kafka.config import COMMIT_EVERY
from trustgraph_pubsub.backends.kafka.consumer import KafkaConsumer, _Partition


class _Client:
    def __init__(self, records: list[Any]) -> None:
        self.records, self.commits = records, []  # type: ignore[var-annotated]

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, list[Any]]:
        out, self.records = {TP: self.records} if self.records else {}, []
        return out

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))


TP = TopicPartition("t", 0)


def _consumer(n: int) -> tuple[KafkaConsumer, _Client]:
    records = [ConsumerRecord("t", 0, i, 0, 0, None, b"x", None, 0, 1, []) for i in range(n)]
    backend = SimpleNamespace(connect_timeout=5.0)
    kc = KafkaConsumer(backend, "q1/tg/x/y", "t", "s", "g", None, "earliest")  # type: ignore[arg-type]
    kc._client = client = _Client(records)
    kc._parts[TP] = _Partition(TP, committed=0)  # where the group starts
    return kc, client


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
