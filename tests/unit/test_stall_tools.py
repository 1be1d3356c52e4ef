"""The pieces the stall test relies on, without a broker: the Pulsar lookup
rewrite of ``tests.brokers.pulsar.LookupRewriter`` and the Kafka consumers'
request timeout (``kafka.config.consumer_request_timeout_ms``)."""

from __future__ import annotations

import pytest

from tests.brokers.pulsar import LookupRewriter
from trustgraph_pubsub.backends.kafka.config import (
    ANSWER_MARGIN_MS,
    SESSION_TIMEOUT_MS,
    consumer_request_timeout_ms,
)

OLD = "pulsar://127.0.0.1:41234"
NEW = "pulsar://127.0.0.1:52345"


def frame(command: bytes, payload: bytes = b"") -> bytes:
    """A Pulsar frame: [total size][command size][command][payload]."""
    body = len(command).to_bytes(4, "big") + command + payload
    return len(body).to_bytes(4, "big") + body


def lookup_answer(url: str) -> bytes:
    # not a real protobuf: the rewrite is byte-for-byte and length-preserving
    return b"\x08\x18\xc2\x01\x1e\x0a\x18" + url.encode() + b"\x20\x02"


def test_a_lookup_answer_names_the_proxy_and_other_frames_pass_unchanged() -> None:
    rewriter = LookupRewriter(OLD, NEW)
    rewrite = rewriter()
    message = frame(b"\x08\x09", payload=b"payload naming " + OLD.encode())
    stream = frame(b"\x08\x13") + frame(lookup_answer(OLD)) + message
    out = b"".join(rewrite(stream[i:i + 5]) for i in range(0, len(stream), 5))
    assert out == frame(b"\x08\x13") + frame(lookup_answer(NEW)) + message
    assert rewriter.rewritten == 1


def test_a_partial_frame_waits_for_the_rest() -> None:
    rewrite = LookupRewriter(OLD, NEW)()
    whole = frame(lookup_answer(OLD))
    assert rewrite(whole[:-3]) == b""
    assert rewrite(whole[-3:]) == frame(lookup_answer(NEW))


def test_urls_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        LookupRewriter(OLD, "pulsar://127.0.0.1:8080")


def test_kafka_consumers_follow_the_request_timeout_above_their_floor() -> None:
    assert consumer_request_timeout_ms(40_000, 5, group=True) == 40_000
    assert consumer_request_timeout_ms(2_000, 5, group=False) == 5 + ANSWER_MARGIN_MS
    assert consumer_request_timeout_ms(2_000, 5, group=True) == SESSION_TIMEOUT_MS + ANSWER_MARGIN_MS
    assert consumer_request_timeout_ms(2_000, 20_000, group=True) == 20_000 + ANSWER_MARGIN_MS
    assert consumer_request_timeout_ms(30_000, 5, group=False) == 30_000
