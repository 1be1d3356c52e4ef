"""RabbitMQ over TLS (amqps) against a private node with a TLS listener on loopback.

The node (``tests.brokers.rabbitmq_tls.RabbitMQTLSNode``) is started once for
this module with certificates that ``tests.brokers.tls.make_certs`` made for
it, and stopped at the end; the machine's shared RabbitMQ is not touched.
Without RabbitMQ installed the broker tests skip, saying how to install it
(they fail instead under ``TG_REQUIRE_BROKERS=1``); the settings checks at
the end need no broker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.brokers import BrokerUnavailable, free_port, require_brokers
from tests.brokers.rabbitmq_tls import RabbitMQTLSNode
from tests.brokers.tls import Certs, make_certs
from trustgraph_pubsub import (
    AuthenticationError,
    BrokerConnectionError,
    ConfigurationError,
    PubSubBackend,
    RequestResponse,
    Responder,
    get_pubsub,
)
from trustgraph_pubsub.backends.rabbitmq import RabbitMQBackend
from trustgraph_pubsub.backends.rabbitmq.connection import _coalesce_writes
from trustgraph_pubsub.factory import add_pubsub_args

pytestmark = pytest.mark.timeout(300)

#: how many messages the throughput test moves, and every how many one is large
MESSAGES = 2000
LARGE_EVERY = 50
LARGE_SIZE = 256 * 1024
#: a refused certificate must be reported well before the connect timeout
REFUSED_WITHIN = 5.0


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("rabbitmq-tls-certs"))


def _start(node: RabbitMQTLSNode) -> RabbitMQTLSNode:
    try:
        node.start()
    except BrokerUnavailable as exc:
        if require_brokers():
            pytest.fail(f"private TLS RabbitMQ required (TG_REQUIRE_BROKERS=1) but: {exc}")
        pytest.skip(f"private TLS RabbitMQ unavailable: {exc}")
    return node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[RabbitMQTLSNode]:
    n = RabbitMQTLSNode(tmp_path_factory.mktemp("rabbitmq-tls-node"), certs)
    try:
        yield _start(n)
    finally:
        n.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No RABBITMQ_*/PUBSUB_BACKEND from the environment (CI points them at the shared node)."""
    import os

    for key in list(os.environ):
        if key.startswith("RABBITMQ_") or key == "PUBSUB_BACKEND":
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
async def tls_backends(node: RabbitMQTLSNode) -> AsyncIterator[list[PubSubBackend]]:
    """A list to put backends in; each is closed after the test."""
    made: list[PubSubBackend] = []
    yield made
    for b in made:
        await b.close()


def topic(label: str, qos: str = "q1") -> str:
    return f"{qos}/tg/tls/{label}-{uuid.uuid4().hex[:10]}"


def payload(i: int) -> bytes:
    """Message ``i``'s body: every ``LARGE_EVERY``th is ``LARGE_SIZE`` bytes, so
    TLS records and socket buffers fill, not only small frames."""
    head = f"m-{i:05d}-".encode()
    if i % LARGE_EVERY == 0:
        return head + bytes((i + k) % 251 for k in range(LARGE_SIZE))
    return head + b"x" * (i % 200)


async def refused(config: dict[str, Any], error: type[Exception] = BrokerConnectionError,
                  ) -> tuple[Exception, float]:
    """What ``create_producer`` raises with ``config`` (it must be ``error``) and
    how many seconds it took to say so."""
    b = get_pubsub(**config)
    start = time.monotonic()
    try:
        with pytest.raises(error) as info:
            await b.create_producer(topic("refused"), None)
    finally:
        await b.close()
    return info.value, time.monotonic() - start


def _is_tls(backend: Any) -> bool:
    transport = getattr(backend._conn, "_transport", None)
    return isinstance(getattr(transport, "_sock", None), ssl.SSLSocket)


# -- (a) throughput ---------------------------------------------------------------


async def test_producer_and_consumer_move_2000_q1_messages(
    node: RabbitMQTLSNode, tls_backends: list[PubSubBackend]
) -> None:
    """A producer and a consumer on separate amqps connections: every message
    arrives once, byte for byte, through the coalesced TLS writes."""
    name = topic("bulk")
    consuming = get_pubsub(**node.backend_config())
    producing = get_pubsub(**node.backend_config())
    tls_backends += [consuming, producing]
    c = await consuming.create_consumer(name, "s", None)
    p = await producing.create_producer(name, None)
    assert isinstance(producing, RabbitMQBackend)
    assert _is_tls(producing) and _is_tls(consuming), "the connections are TLS"
    assert producing._flush_now is not None, "write coalescing is on over TLS too"

    start = time.monotonic()
    for i in range(MESSAGES):
        await p.send(payload(i))
    await p.flush()
    got: dict[int, bytes] = {}
    duplicates = 0
    while len(got) < MESSAGES:
        m = await c.receive(30)
        body = m.value()
        i = int(body[2:7])
        duplicates += i in got
        got[i] = body
        await c.acknowledge(m)
    elapsed = time.monotonic() - start
    assert duplicates == 0
    assert sorted(got) == list(range(MESSAGES))
    assert all(got[i] == payload(i) for i in range(MESSAGES)), "bodies arrive intact"
    size = sum(len(payload(i)) for i in range(MESSAGES))
    print(f"\n{MESSAGES} q1 messages ({size / 1e6:.1f} MB) over amqps in {elapsed:.2f}s "
          f"({MESSAGES / elapsed:.0f} msg/s)")
    await p.close()
    await c.unsubscribe()
    await producing.delete_queue(name)


# -- (b) request/response -----------------------------------------------------------


@dataclass
class Number:  # both the request and the reply
    n: int


async def test_request_response(node: RabbitMQTLSNode, tls_backends: list[PubSubBackend]) -> None:
    """Latency-bound producers (requests, replies) write at once over TLS too."""
    rq, rs = topic("req"), topic("resp")
    service = get_pubsub(**node.backend_config())
    caller = get_pubsub(**node.backend_config())
    tls_backends += [service, caller]

    async def handler(req: Number, props: dict[str, str]) -> Number:
        return Number(req.n * 10)

    async with Responder(service, rq, Number, rs, Number, handler, subscription="svc",
                         concurrency=8), \
            RequestResponse(caller, rq, Number, rs, Number) as rr:
        assert await rr.request(Number(1), timeout=30) == Number(10)
        start = time.monotonic()
        replies = await asyncio.gather(*(rr.request(Number(n), timeout=30) for n in range(100)))
        elapsed = time.monotonic() - start
    assert replies == [Number(n * 10) for n in range(100)]
    print(f"\n100 concurrent requests over amqps in {elapsed:.2f}s")
    assert _is_tls(caller) and _is_tls(service)
    await service.delete_queue(rq)
    await service.delete_queue(rs)


async def test_latency_bound_sends_leave_nothing_queued(
    node: RabbitMQTLSNode, tls_backends: list[PubSubBackend]
) -> None:
    """As over plain AMQP: a latency-bound send is written through the TLS
    transport at once, a stream send at the next loop iteration."""
    b = get_pubsub(**node.backend_config())
    tls_backends.append(b)
    name = topic("eager", "q0")
    c = await b.create_consumer(name, "s", None)
    eager = await b.create_producer(name, None, latency_bound=True)
    stream = await b.create_producer(name, None)
    assert isinstance(b, RabbitMQBackend) and _is_tls(b)
    tx = b._conn._transport._tx_buffers
    await stream.send(b"1")
    assert tx, "a stream send waits for the next loop iteration to be written"
    await eager.send(b"2")
    assert not tx, "a latency-bound send (and what was queued before it) is written at once"
    got = sorted([(await c.receive(30)).value() for _ in range(2)])
    assert got == [b"1", b"2"]
    await b.delete_queue(name)


class _FakeSSLTransport:
    """pika's ``_AsyncSSLTransport`` as far as ``_coalesce_writes`` sees it, with
    its assertion that an action slot holding ``_produce`` equals ``self._produce``."""

    def __init__(self) -> None:
        self._tx_buffers: deque[bytes] = deque()
        self.sent: list[bytes] = []
        self._ssl_readable_action: Any = self._consume
        self._ssl_writable_action: Any = self._produce  # bound before the swap

    def _consume(self) -> None:
        pass

    def _produce(self) -> None:
        assert self._ssl_writable_action == self._produce
        while self._tx_buffers:
            self.sent.append(self._tx_buffers.popleft())

    def _on_socket_writable(self) -> None:
        if self._ssl_writable_action:
            self._ssl_writable_action()


def test_coalescing_repoints_a_tls_slot_bound_before_it() -> None:
    transport = _FakeSSLTransport()
    flush = _coalesce_writes(SimpleNamespace(_transport=transport))
    assert flush is not None
    transport._tx_buffers.extend([b"a", b"bc", b"d"])
    flush()
    assert transport.sent == [b"abcd"]
    transport._ssl_writable_action = None  # waiting to read (WANT_READ): no write now
    transport._tx_buffers.append(b"e")
    flush()
    assert transport.sent == [b"abcd"] and list(transport._tx_buffers) == [b"e"]


# -- (c) a certificate that does not verify ---------------------------------------------


async def test_untrusted_broker_certificate_is_a_connection_error(
    node: RabbitMQTLSNode, certs: Certs
) -> None:
    """Trusting the wrong authority: ``BrokerConnectionError`` naming the failed
    verification, at once (not a hang, not a bare ``ssl.SSLError``)."""
    exc, elapsed = await refused(node.backend_config(rabbitmq_tls_ca_file=str(certs.other_ca)))
    text = str(exc)
    print(f"\nbad certificate reported in {elapsed:.3f}s: {text}")
    assert elapsed < REFUSED_WITHIN
    assert "certificate" in text and "verif" in text
    # RabbitMQ sends its CA along: OpenSSL finds an untrusted self-signed root
    assert ("self-signed certificate in certificate chain" in text
            or "unable to get local issuer certificate" in text)
    assert "--rabbitmq-tls-ca-file" in text
    assert f"localhost:{node.amqps_port}" in text


async def test_system_authorities_do_not_trust_a_private_ca(node: RabbitMQTLSNode) -> None:
    """No CA file: the system's authorities, which never signed the test CA."""
    exc, _ = await refused(node.backend_config(rabbitmq_tls_ca_file=None))
    assert "certificate verify failed" in str(exc)


async def test_hostname_check_passes_for_a_name_in_the_certificate(
    node: RabbitMQTLSNode, tls_backends: list[PubSubBackend]
) -> None:
    """The certificate names ``localhost`` and ``127.0.0.1``: both connect with the check on."""
    b = get_pubsub(**node.backend_config(rabbitmq_host="127.0.0.1"))
    tls_backends.append(b)
    p = await b.create_producer(topic("by-ip", "q0"), None)
    await p.close()


async def test_wrong_port_is_reported_within_bounds(node: RabbitMQTLSNode) -> None:
    """TLS to the plain port, and plain AMQP to the TLS port, fail with a
    ``BrokerConnectionError`` rather than hanging; the first says amqps is elsewhere."""
    tls_to_plain = node.backend_config(rabbitmq_port=node.amqp_port)
    plain_to_tls = node.backend_config(rabbitmq_tls=False, rabbitmq_tls_ca_file=None)
    for config, hint in ((tls_to_plain, "amqps listener"), (plain_to_tls, "")):
        exc, elapsed = await refused(config)
        assert elapsed < 15
        assert hint in str(exc)


# -- mutual TLS: a node that requires a client certificate ------------------------------


@pytest.fixture(scope="module")
def mtls_node(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[RabbitMQTLSNode]:
    n = RabbitMQTLSNode(tmp_path_factory.mktemp("rabbitmq-mtls-node"), certs,
                        fail_if_no_peer_cert=True)
    try:
        yield _start(n)
    finally:
        n.stop()


async def test_client_certificate(mtls_node: RabbitMQTLSNode, certs: Certs) -> None:
    """With ``--rabbitmq-tls-cert-file``/``-key-file`` the node that demands a client
    certificate lets the client in; without them it is a bounded connection error."""
    with_cert = get_pubsub(**mtls_node.backend_config(
        rabbitmq_tls_cert_file=str(certs.client_cert),
        rabbitmq_tls_key_file=str(certs.client_key)))
    try:
        await _round_trip(with_cert)
    finally:
        await with_cert.close()
    exc, elapsed = await refused(mtls_node.backend_config())
    print(f"\nno client certificate reported in {elapsed:.3f}s: {exc}")
    assert elapsed < 15
    assert "client certificate" in str(exc)
    assert "--rabbitmq-tls-cert-file" in str(exc)


# -- (d) from flags and from the environment -----------------------------------------


async def _round_trip(b: PubSubBackend) -> None:
    name = topic("cfg", "q0")
    c = await b.create_consumer(name, "s", None)
    p = await b.create_producer(name, None, latency_bound=True)
    await p.send(b"over tls")
    m = await c.receive(30)
    assert m.value() == b"over tls"
    await c.acknowledge(m)
    assert _is_tls(b)
    await b.delete_queue(name)


async def test_tls_from_flags(
    node: RabbitMQTLSNode, certs: Certs, clean_env: pytest.MonkeyPatch,
    tls_backends: list[PubSubBackend],
) -> None:
    parser = argparse.ArgumentParser()
    add_pubsub_args(parser)
    args = parser.parse_args([
        "--pubsub-backend", "rabbitmq", "--rabbitmq-host", "localhost",
        "--rabbitmq-port", str(node.amqps_port), "--rabbitmq-tls",
        "--rabbitmq-tls-ca-file", str(certs.ca),
    ])
    b = get_pubsub(**vars(args))
    tls_backends.append(b)
    assert repr(b).startswith("<RabbitMQBackend amqps ")
    await _round_trip(b)


async def test_tls_from_environment(
    node: RabbitMQTLSNode, certs: Certs, clean_env: pytest.MonkeyPatch,
    tls_backends: list[PubSubBackend],
) -> None:
    for key, value in {
        "PUBSUB_BACKEND": "rabbitmq", "RABBITMQ_HOST": "127.0.0.1",
        "RABBITMQ_PORT": str(node.amqps_port), "RABBITMQ_TLS": "true",
        "RABBITMQ_TLS_CA_FILE": str(certs.ca), "RABBITMQ_TLS_VERIFY_HOSTNAME": "yes",
    }.items():
        clean_env.setenv(key, value)
    parser = argparse.ArgumentParser()
    add_pubsub_args(parser)
    b = get_pubsub(**vars(parser.parse_args([])))
    tls_backends.append(b)
    await _round_trip(b)


async def test_flag_overrides_environment(
    node: RabbitMQTLSNode, certs: Certs, clean_env: pytest.MonkeyPatch,
) -> None:
    """``--rabbitmq-tls-ca-file`` beats RABBITMQ_TLS_CA_FILE: the wrong CA from the
    flag is the one used."""
    clean_env.setenv("RABBITMQ_TLS_CA_FILE", str(certs.ca))
    exc, _ = await refused(node.backend_config(rabbitmq_tls_ca_file=str(certs.other_ca)))
    assert "certificate verify failed" in str(exc)


# -- (f) the password stays out of everything ------------------------------------------


async def test_password_is_never_shown(
    node: RabbitMQTLSNode, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        ({}, AuthenticationError),  # wrong password over TLS
        ({"rabbitmq_tls_ca_file": str(certs.other_ca)}, BrokerConnectionError),
        ({"rabbitmq_port": node.amqp_port}, BrokerConnectionError),
    ]
    for overrides, error in cases:
        config = node.backend_config(rabbitmq_password=secret, **overrides)
        texts.append(repr(get_pubsub(**config)))  # idle: nothing to close
        exc: BaseException | None = (await refused(config, error))[0]
        while exc is not None:  # the whole chain, pika's exceptions included
            texts += [str(exc), repr(exc)]
            exc = exc.__cause__ or exc.__context__
    texts += [r.getMessage() for r in caplog.records]
    with pytest.raises(ConfigurationError) as bad:
        get_pubsub(**node.backend_config(rabbitmq_password=secret,
                                         rabbitmq_tls_ca_file="/nonexistent/ca.pem"))
    texts.append(str(bad.value))
    assert not [t for t in texts if secret in t]


# -- (e) settings checks (no broker) -------------------------------------------------


@pytest.mark.parametrize("option", ["ca_file", "cert_file", "key_file"])
def test_tls_file_without_tls_names_the_tls_flag(
    certs: Certs, option: str, clean_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(pubsub_backend="rabbitmq", **{f"rabbitmq_tls_{option}": str(certs.ca)})
    text = str(info.value)
    assert "--rabbitmq-tls " in text or text.rstrip().endswith("--rabbitmq-tls")
    assert f"--rabbitmq-tls-{option.replace('_', '-')}" in text


def test_tls_file_without_tls_from_environment(
    certs: Certs, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("RABBITMQ_TLS_CA_FILE", str(certs.ca))
    with pytest.raises(ConfigurationError, match="--rabbitmq-tls "):
        get_pubsub(pubsub_backend="rabbitmq")
    clean_env.setenv("RABBITMQ_TLS", "off")
    with pytest.raises(ConfigurationError, match="--rabbitmq-tls "):
        get_pubsub(pubsub_backend="rabbitmq")


def test_missing_ca_file_names_flag_and_path(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "missing-ca.pem"
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(pubsub_backend="rabbitmq", rabbitmq_tls=True, rabbitmq_tls_ca_file=str(path))
    assert "--rabbitmq-tls-ca-file" in str(info.value)
    assert str(path) in str(info.value)


def test_client_cert_needs_its_key(certs: Certs, clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(pubsub_backend="rabbitmq", rabbitmq_tls=True,
                   rabbitmq_tls_cert_file=str(certs.client_cert))
    assert "--rabbitmq-tls-cert-file" in str(info.value)
    assert "--rabbitmq-tls-key-file" in str(info.value)


def test_tls_flag_must_be_a_truth_word(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RABBITMQ_TLS", "maybe")
    with pytest.raises(ConfigurationError, match="--rabbitmq-tls"):
        get_pubsub(pubsub_backend="rabbitmq")


def test_tls_is_off_by_default_and_port_unchanged(clean_env: pytest.MonkeyPatch) -> None:
    b = get_pubsub(pubsub_backend="rabbitmq")
    assert isinstance(b, RabbitMQBackend)
    assert not b.tls and b.port == 5672
    assert repr(b).startswith("<RabbitMQBackend amqp ")
    on = get_pubsub(pubsub_backend="rabbitmq", rabbitmq_tls=True, rabbitmq_port=free_port())
    assert isinstance(on, RabbitMQBackend) and on.tls
