"""Test tools without a broker: the Pulsar lookup rewrite of
``tests.brokers.pulsar.LookupRewriter`` (the stall and TLS tests rely on it)
and the Kafka consumers' request timeout
(``kafka.config.consumer_request_timeout_ms``)."""

from __future__ import annotations

from tests.brokers.pulsar import LookupRewriter, _encode, _fields
from trustgraph_pubsub.backends.kafka.config import (
    ANSWER_MARGIN_MS,
    SESSION_TIMEOUT_MS,
    consumer_request_timeout_ms,
)

OLD = "pulsar://127.0.0.1:41234"
NEW = "pulsar://127.0.0.1:5234"
NEW_TLS = "pulsar+ssl://localhost:5234"


def frame(command: bytes, payload: bytes = b"") -> bytes:
    """A Pulsar frame: [total size][command size][command][payload]."""
    body = len(command).to_bytes(4, "big") + command + payload
    return len(body).to_bytes(4, "big") + body


def lookup_answer(url: str, tls_url: str | None = None, request_id: int = 300) -> bytes:
    """BaseCommand{type: LOOKUP_RESPONSE, lookupTopicResponse{brokerServiceUrl, [Tls], request_id}}."""
    inner = [(1, 2, url.encode())] + ([(2, 2, tls_url.encode())] if tls_url else [])
    inner.append((4, 0, bytes([0xAC, 0x02])))  # varint 300
    return _encode([(1, 0, bytes([24])), (24, 2, _encode(inner))])


def test_protobuf_fields_round_trip() -> None:
    command = lookup_answer(OLD, "pulsar+ssl://x:1")
    assert _encode(_fields(command)) == command


def test_a_lookup_answer_names_the_proxy_and_other_frames_pass_unchanged() -> None:
    rewriter = LookupRewriter(OLD, NEW, NEW_TLS)
    rewrite = rewriter()
    message = frame(b"\x08\x09", payload=b"payload naming " + OLD.encode())
    stream = frame(b"\x08\x13") + frame(lookup_answer(OLD)) + message
    out = b"".join(rewrite(stream[i:i + 5]) for i in range(0, len(stream), 5))
    assert out == frame(b"\x08\x13") + frame(lookup_answer(NEW, NEW_TLS)) + message
    assert rewriter.rewritten == 1


def test_without_a_tls_url_only_the_plain_one_changes() -> None:
    rewrite = LookupRewriter(OLD, NEW)()
    assert rewrite(frame(lookup_answer(OLD))) == frame(lookup_answer(NEW))


def test_a_partial_frame_waits_for_the_rest() -> None:
    rewrite = LookupRewriter(OLD, NEW)()
    whole = frame(lookup_answer(OLD))
    assert rewrite(whole[:-3]) == b""
    assert rewrite(whole[-3:]) == frame(lookup_answer(NEW))


def test_kafka_consumers_follow_the_request_timeout_above_their_floor() -> None:
    assert consumer_request_timeout_ms(40_000, 5, group=True) == 40_000
    assert consumer_request_timeout_ms(2_000, 5, group=False) == 5 + ANSWER_MARGIN_MS
    assert consumer_request_timeout_ms(2_000, 5, group=True) == SESSION_TIMEOUT_MS + ANSWER_MARGIN_MS
    assert consumer_request_timeout_ms(2_000, 20_000, group=True) == 20_000 + ANSWER_MARGIN_MS
    assert consumer_request_timeout_ms(30_000, 5, group=False) == 30_000
    assert consumer_request_timeout_ms(2_000, 5, group=True, session_timeout_ms=45_000) \
        == 45_000 + ANSWER_MARGIN_MS
    assert consumer_request_timeout_ms(2_000, 5, group=False, session_timeout_ms=45_000) \
        == 5 + ANSWER_MARGIN_MS
