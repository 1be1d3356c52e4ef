"""MQTT over TLS against a private, TLS-only Mosquitto with certificates the test makes.

The fixture starts its own ``mosquitto`` (the machine's shared one on 1883 is
left alone) with two loopback listeners that speak TLS only: one with a
server certificate for ``localhost``/``127.0.0.1``, and one that also demands
a client certificate signed by the test authority (mutual TLS).

Over TLS the backend's ``_Wire`` drives paho's ``ssl.SSLSocket`` itself, so
the stream tests push enough bytes to make OpenSSL refuse writes
(``SSLWantWriteError``: the buffer must be retried as it was) and, with the
wire's reads made smaller than a TLS record, to leave decrypted bytes inside
the SSL object with the kernel socket empty (``pending()``): a reader that
waits for the socket to become readable would stall on them.  Both are
counted and must have happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import (
    async_terminate,
    free_port,
    port_open,
    refused_port,
    require_brokers,
    terminate,
    wait_for_port,
)
from tests.brokers.tls import Certs, make_certs
from trustgraph_pubsub import (
    BrokerConnectionError,
    ConfigurationError,
    RequestResponse,
    Responder,
    add_pubsub_args,
    get_pubsub,
)
from trustgraph_pubsub.backends.mqtt import MQTTBackend, wire
from trustgraph_schema.topic import topic as make_topic

pytestmark = pytest.mark.timeout(600)

HOW_TO = "install mosquitto (`apt-get install mosquitto`)"
SECRET = "s3cr3t-Tls-pa55word"


@dataclass
class TLSBroker:
    host: str
    port: int       # TLS, server certificate only
    mtls_port: int  # TLS, and a client certificate is required
    certs: Certs
    folder: Path

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {
            "pubsub_backend": "mqtt",
            "mqtt_host": self.host,
            "mqtt_port": self.port,
            "mqtt_tls": True,
            "mqtt_tls_ca_file": str(self.certs.ca),
            **overrides,
        }

    def log(self) -> str:
        try:
            return (self.folder / "mosquitto.log").read_text()[-2000:]
        except OSError:
            return ""


def _unavailable(why: str) -> None:
    if require_brokers():
        pytest.fail(f"TLS mosquitto required (TG_REQUIRE_BROKERS=1) but unavailable: {why}")
    pytest.skip(f"TLS mosquitto unavailable: {why}")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSBroker]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(binary, os.X_OK):
        _unavailable(f"mosquitto not found; {HOW_TO}")
    folder = tmp_path_factory.mktemp("tls-mosquitto")
    certs = make_certs(folder / "certs")
    port, mtls_port = free_port(), free_port()
    files = [f"cafile {certs.ca}", f"certfile {certs.server_cert}", f"keyfile {certs.server_key}"]
    lines = [
        "per_listener_settings false",
        "allow_anonymous true",
        "persistence false",
        "set_tcp_nodelay true",
        "max_queued_messages 0",
        "max_inflight_messages 100",
        f"log_dest file {folder}/mosquitto.log",
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        *(["user root"] if os.geteuid() == 0 else []),
        f"listener {port} 127.0.0.1", *files,
        f"listener {mtls_port} 127.0.0.1", *files, "require_certificate true",
    ]
    (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(folder / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    broker = TLSBroker("127.0.0.1", port, mtls_port, certs, folder)
    try:
        if not (wait_for_port("127.0.0.1", port, 30) and wait_for_port("127.0.0.1", mtls_port, 30)):
            _unavailable(f"the TLS mosquitto did not open ports {port}/{mtls_port}: {broker.log()}")
        yield broker
    finally:
        terminate(proc)


@pytest.fixture
async def backend(tls_broker: TLSBroker) -> AsyncIterator[Any]:
    b = get_pubsub(**tls_broker.config())
    try:
        yield b
    finally:
        await b.close()


def fresh(label: str, qos: str = "q1") -> str:
    return make_topic(f"tls-{os.urandom(5).hex()}-{label}", qos=qos, tenant="tg", namespace="tls")


@dataclass
class Num:
    n: int


async def round_trip(b: Any, count: int = 1) -> None:
    """``count`` messages through a fresh topic on ``b``, received in order."""
    name = fresh("rt")
    c = await b.create_consumer(name, "s", Num)
    p = await b.create_producer(name, Num)
    for i in range(count):
        await p.send(Num(i))
    assert [(await c.receive(timeout=30)).value().n for _ in range(count)] == list(range(count))
    await c.unsubscribe()


# -- what TLS does under the wire --------------------------------------------------------


@dataclass
class SSLCounts:
    want_write: int = 0   # writes OpenSSL refused for now (retried with the same bytes)
    pending: int = 0      # reads that left decrypted bytes in the SSL object
    sent: int = 0         # bytes SSLSocket.send reported written


@pytest.fixture
def ssl_counts(monkeypatch: pytest.MonkeyPatch) -> SSLCounts:
    """Count, on every ``ssl.SSLSocket`` of the test, refused writes and reads leaving bytes."""
    counts = SSLCounts()
    send, recv = ssl.SSLSocket.send, ssl.SSLSocket.recv

    def counted_send(self: ssl.SSLSocket, data: Any, flags: int = 0) -> int:
        try:
            n = send(self, data, flags)
        except ssl.SSLWantWriteError:
            counts.want_write += 1
            raise
        counts.sent += n
        return n

    def counted_recv(self: ssl.SSLSocket, size: int = 1024, flags: int = 0) -> bytes:
        data = recv(self, size, flags)
        if self._sslobj is not None and self.pending() > 0:  # type: ignore[attr-defined]
            counts.pending += 1
        return data

    monkeypatch.setattr(ssl.SSLSocket, "send", counted_send)
    monkeypatch.setattr(ssl.SSLSocket, "recv", counted_recv)
    return counts


def _size(i: int) -> int:
    """Payload sizes: ~1 MiB for 8 in a row every 1,000 (a burst the socket cannot take
    at once), 100 KiB every 50th, 17 KiB (over one TLS record) every 7th, small ones between."""
    if i % 1000 >= 992:
        return 1024 * 1024 + 17
    if i % 50 == 25:
        return 100 * 1024
    if i % 7 == 3:
        return 17 * 1024
    return 20 + i % 300


def _payload(producer: int, i: int, size: Callable[[int], int] = _size) -> bytes:
    head = f"{producer}:{i}:".encode()
    body = (i.to_bytes(4, "big") * (size(i) // 4 + 1))[: size(i)]
    return head + body


async def _stream(broker: TLSBroker, total: int, size: Callable[[int], int] = _size,
                  producers: int = 2, **config: Any) -> tuple[float, int]:
    """``total`` q1 messages from ``producers`` backends (each its own TLS connection)
    to one consumer on a third; every one arrives once, intact, in its producer's order."""
    name = fresh("stream")
    cons_backend = get_pubsub(**broker.config(**config))
    prod_backends = [get_pubsub(**broker.config(**config)) for _ in range(producers)]
    per = total // producers
    try:
        c = await cons_backend.create_consumer(name, "s", None, prefetch=200)
        ps = [await b.create_producer(name, None) for b in prod_backends]
        got: dict[int, list[int]] = {k: [] for k in range(producers)}
        bad: list[str] = []
        start = time.monotonic()

        async def send(k: int) -> None:
            for i in range(per):
                await ps[k].send(_payload(k, i, size))
            await ps[k].flush()

        async def receive() -> None:
            for _ in range(per * producers):
                m = await c.receive(timeout=60)
                data = m.data()
                k, i, _ = data.split(b":", 2)
                if data != _payload(int(k), int(i), size):
                    bad.append(f"{int(k)}:{int(i)} ({len(data)} bytes)")
                got[int(k)].append(int(i))
                await c.acknowledge(m)

        await asyncio.gather(receive(), *(send(k) for k in range(producers)))
        elapsed = time.monotonic() - start
        # Nothing more arrives: no duplicates behind the last expected one.
        with contextlib.suppress(Exception):
            extra = await c.receive(timeout=2)
            got[int(extra.data().split(b":", 1)[0])].append(-1)
        assert not bad, f"corrupted payloads: {bad[:5]}"
        for k in range(producers):
            assert got[k] == list(range(per)), (
                f"producer {k}: {len(got[k])} received for {per} sent, "
                f"{len(set(range(per)) - set(got[k]))} lost, {len(got[k]) - len(set(got[k]))} "
                f"duplicated, in order: {got[k] == sorted(got[k])}"
            )
        await c.unsubscribe()
        return elapsed, sum(len(_payload(0, i, size)) for i in range(per)) * producers
    finally:
        for b in (cons_backend, *prod_backends):
            await b.close()


async def test_ten_thousand_q1_messages_over_tls(tls_broker: TLSBroker, ssl_counts: SSLCounts) -> None:
    elapsed, size = await _stream(tls_broker, 10_000)
    print(f"10,000 q1 messages ({size / 2**20:.0f} MiB) over TLS in {elapsed:.1f}s; "
          f"{ssl_counts.want_write} writes refused (SSLWantWriteError) and retried, "
          f"{ssl_counts.pending} reads left bytes pending in the SSL object")
    assert ssl_counts.want_write > 0, "no SSL write was ever refused: the test pushed too little"


async def test_a_first_read_that_wants_a_write_while_connect_waits_in_paho(
    tls_broker: TLSBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write of a link (CONNECT, in the executor) wants a read, so paho
    keeps it queued; the first read (the broker's TLS 1.3 session tickets) wants a
    write.  The link and the wire then both wanted the socket's one writer slot,
    and the CONNECT was never sent: no CONNACK (a flaky CI failure, made certain)."""
    send, recv = ssl.SSLSocket.send, ssl.SSLSocket.recv
    first = {"send": True, "recv": True}

    def wanting_send(self: ssl.SSLSocket, data: Any, flags: int = 0) -> int:
        if first["send"]:
            first["send"] = False
            raise ssl.SSLWantReadError("made up")
        return send(self, data, flags)

    def wanting_recv(self: ssl.SSLSocket, size: int = 1024, flags: int = 0) -> bytes:
        if first["recv"]:
            first["recv"] = False
            raise ssl.SSLWantWriteError("made up")
        return recv(self, size, flags)

    for attempt in range(5):
        first.update(send=True, recv=True)
        monkeypatch.setattr(ssl.SSLSocket, "send", wanting_send)
        monkeypatch.setattr(ssl.SSLSocket, "recv", wanting_recv)
        backend = get_pubsub(**tls_broker.config(mqtt_connect_timeout=5.0))
        try:
            name = fresh("first")
            c = await backend.create_consumer(name, "s", None)
            monkeypatch.undo()
            p = await backend.create_producer(name, None)
            await p.send(b"after a wanting start %d" % attempt)
            m = await c.receive(timeout=10)
            assert m.data() == b"after a wanting start %d" % attempt
            await c.acknowledge(m)
            assert not first["send"] and not first["recv"], first
        finally:
            monkeypatch.undo()
            await backend.close()


async def test_reads_that_want_writes_and_writes_that_want_reads(
    tls_broker: TLSBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What TLS renegotiation or a key update does, made up: now and then a read
    raises ``SSLWantWriteError`` (nothing read), and a write raises
    ``SSLWantReadError`` (nothing written) while there is something to read."""
    made = {"read": 0, "write": 0}
    send, recv = ssl.SSLSocket.send, ssl.SSLSocket.recv
    calls = {"send": 0, "recv": 0}

    def wanting_send(self: ssl.SSLSocket, data: Any, flags: int = 0) -> int:
        calls["send"] += 1
        if calls["send"] % 5 == 0 and select.select([self], [], [], 0)[0]:
            made["write"] += 1
            raise ssl.SSLWantReadError("made up")
        return send(self, data, flags)

    def wanting_recv(self: ssl.SSLSocket, size: int = 1024, flags: int = 0) -> bytes:
        calls["recv"] += 1
        if calls["recv"] % 7 == 0:
            made["read"] += 1
            raise ssl.SSLWantWriteError("made up")
        return recv(self, size, flags)

    monkeypatch.setattr(ssl.SSLSocket, "send", wanting_send)
    monkeypatch.setattr(ssl.SSLSocket, "recv", wanting_recv)
    elapsed, _ = await _stream(tls_broker, 2_000, lambda i: 20 + (i * 37) % 40_000)
    print(f"2,000 q1 messages in {elapsed:.1f}s with {made['read']} reads wanting a write and "
          f"{made['write']} writes wanting a read")
    assert made["read"] > 0 and made["write"] > 0, made


@contextlib.asynccontextmanager
async def coalescing_proxy(broker: TLSBroker) -> AsyncIterator[int]:
    """A TLS proxy in front of the broker that forwards what it reads in big writes.

    Mosquitto writes every MQTT packet with its own ``SSL_write``, so each TLS
    record it sends holds (part of) one packet.  Other brokers, and this proxy,
    pack many packets into each record: a record then ends in the middle of a
    packet, and a client that reads less than a record at a time is left with
    whole packets decrypted inside the SSL object and nothing on the socket.
    """
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(broker.certs.server_cert, broker.certs.server_key)
    client_ctx = ssl.create_default_context(cafile=str(broker.certs.ca))
    tasks: set[asyncio.Task[None]] = set()

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, gather: bool) -> None:
        try:
            while data := await r.read(256 * 1024):
                if gather:  # whatever else has arrived by now goes in the same write
                    await asyncio.sleep(0.002)
                    while len(r._buffer) and len(data) < 256 * 1024:  # type: ignore[attr-defined]
                        data += await r.read(256 * 1024)
                w.write(data)
                await w.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            w.close()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(broker.host, broker.port, ssl=client_ctx,
                                               server_hostname="localhost")
        for t in (pump(r, uw, False), pump(ur, w, True)):
            task = asyncio.create_task(t)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_bytes_held_by_tls_are_read_without_waiting_for_the_socket(
    tls_broker: TLSBroker, ssl_counts: SSLCounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads smaller than a TLS record leave the rest decrypted in the SSL object, and
    the proxy's records hold many packets: nothing on the socket announces those.

    The consumer takes each window of ``prefetch`` messages before acknowledging
    any, so the broker sends nothing more meanwhile (and with keep-alive off,
    no ping wakes the socket either): a reader that stopped with packets still
    in the SSL object would wait for ever.
    """
    monkeypatch.setattr(wire, "_RECV_CHUNK", 700)
    total, window = 3_000, 100
    size = lambda i: 800 + i % 2000  # noqa: E731 -- packets end where reads end
    async with coalescing_proxy(tls_broker) as port:
        b = get_pubsub(**tls_broker.config(mqtt_port=port, mqtt_keepalive=0))
        try:
            name = fresh("held")
            c = await b.create_consumer(name, "s", None, prefetch=window)
            p = await b.create_producer(name, None)
            start = time.monotonic()
            for i in range(total):
                await p.send(_payload(0, i, size))
            await p.flush()
            got = []
            for _ in range(total // window):
                held = [await c.receive(timeout=15) for _ in range(window)]
                got += [m.data() for m in held]
                for m in held:
                    await c.acknowledge(m)
            elapsed = time.monotonic() - start
            assert got == [_payload(0, i, size) for i in range(total)]
            await c.unsubscribe()
        finally:
            await b.close()
    print(f"{total:,} q1 messages in windows of {window} through a coalescing TLS proxy with "
          f"700-byte reads in {elapsed:.1f}s; {ssl_counts.pending} reads left bytes pending "
          f"in the SSL object")
    assert ssl_counts.pending > 0, "no read ever left bytes in the SSL object"


# -- request/response ------------------------------------------------------------------


async def test_request_response_over_tls(backend: Any) -> None:
    req, resp = fresh("req"), fresh("resp")
    responder = Responder(backend, req, Num, resp, Num, lambda r, _p: Num(r.n * 2),
                          subscription="svc")
    await responder.start()
    rr = RequestResponse(backend, req, Num, resp, Num)
    await rr.start()
    try:
        replies = await asyncio.gather(*(rr.request(Num(i), timeout=30) for i in range(50)))
        assert [r.n for r in replies] == [2 * i for i in range(50)]
    finally:
        await rr.stop()
        await responder.stop()


# -- refusals ---------------------------------------------------------------------------


async def test_an_untrusted_broker_certificate_is_a_connection_error(tls_broker: TLSBroker) -> None:
    b = get_pubsub(**tls_broker.config(mqtt_tls_ca_file=str(tls_broker.certs.other_ca),
                                       mqtt_connect_timeout=5.0))
    start = time.monotonic()
    try:
        with pytest.raises(BrokerConnectionError) as info:
            await asyncio.wait_for(b.create_producer(fresh("bad-ca"), Num), 30)
        took = time.monotonic() - start
        text = str(info.value)
        print(f"untrusted certificate reported in {took:.2f}s: {text}")
        assert "certificate" in text and "verif" in text, text
        assert f"{tls_broker.host}:{tls_broker.port}" in text and "--mqtt-tls-ca-file" in text
        assert took < 10, f"took {took:.1f}s"
        with pytest.raises(BrokerConnectionError, match="certificate"):
            await asyncio.wait_for(b.create_consumer(fresh("bad-ca"), "s", Num), 30)
    finally:
        await b.close()


async def test_the_broker_name_is_checked_unless_turned_off(tls_broker: TLSBroker) -> None:
    alias = "::ffff:127.0.0.1"  # the same listener by an address its certificate does not list
    if not await asyncio.to_thread(port_open, alias, tls_broker.port, 2.0):
        pytest.skip(f"{alias} (IPv4-mapped IPv6) does not reach 127.0.0.1 here")
    b = get_pubsub(**tls_broker.config(mqtt_host=alias, mqtt_connect_timeout=5.0))
    try:
        with pytest.raises(BrokerConnectionError) as info:
            await asyncio.wait_for(b.create_producer(fresh("name"), Num), 30)
        assert "certificate failed verification" in str(info.value), str(info.value)
        assert "mismatch" in str(info.value), str(info.value)
    finally:
        await b.close()
    b = get_pubsub(**tls_broker.config(mqtt_host=alias, mqtt_tls_verify_hostname=False))
    try:
        await round_trip(b)
    finally:
        await b.close()


async def test_a_plain_client_on_the_tls_port_is_told_to_use_tls(tls_broker: TLSBroker) -> None:
    b = get_pubsub(pubsub_backend="mqtt", mqtt_host=tls_broker.host, mqtt_port=tls_broker.port,
                   mqtt_connect_timeout=5.0)
    try:
        with pytest.raises(BrokerConnectionError, match="--mqtt-tls"):
            await asyncio.wait_for(b.create_producer(fresh("plain"), Num), 30)
    finally:
        await b.close()


async def test_a_tls_client_on_a_plain_port_is_told_so(tls_broker: TLSBroker) -> None:
    port = free_port()
    folder = tls_broker.folder / f"plain-{port}"
    folder.mkdir()
    (folder / "m.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        + ("user root\n" if os.geteuid() == 0 else ""))
    proc = await asyncio.to_thread(
        subprocess.Popen, [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                           str(folder / "m.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 30)
        b = get_pubsub(**tls_broker.config(mqtt_port=port, mqtt_connect_timeout=5.0))
        try:
            with pytest.raises(BrokerConnectionError, match="TLS") as info:
                await asyncio.wait_for(b.create_producer(fresh("plain"), Num), 30)
            assert "8883" in str(info.value)
        finally:
            await b.close()
    finally:
        await async_terminate(proc)


# -- settings -------------------------------------------------------------------------


async def test_flags_and_environment_turn_tls_on(
    tls_broker: TLSBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    add_pubsub_args(parser)
    args = parser.parse_args([
        "--pubsub-backend", "mqtt", "--mqtt-host", "localhost", "--mqtt-port", str(tls_broker.port),
        "--mqtt-tls", "--mqtt-tls-ca-file", str(tls_broker.certs.ca),
    ])
    from_flags = get_pubsub(**vars(args))
    for k, v in {"PUBSUB_BACKEND": "mqtt", "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(tls_broker.port),
                 "MQTT_TLS": "true", "MQTT_TLS_CA_FILE": str(tls_broker.certs.ca),
                 "MQTT_TLS_VERIFY_HOSTNAME": "false"}.items():
        monkeypatch.setenv(k, v)
    from_env = get_pubsub()
    assert isinstance(from_flags, MQTTBackend) and isinstance(from_env, MQTTBackend)
    assert from_flags.tls and from_env.tls and "tls" in repr(from_env)
    assert from_flags.tls_context is not None and from_flags.tls_context.check_hostname
    assert from_env.tls_context is not None and not from_env.tls_context.check_hostname
    try:
        for b in (from_flags, from_env):
            await round_trip(b)
    finally:
        await from_flags.close()
        await from_env.close()


@pytest.mark.parametrize("flag", ["ca_file", "cert_file", "key_file"])
def test_a_tls_file_without_tls_names_the_flag(tls_broker: TLSBroker, flag: str) -> None:
    path = {"ca_file": tls_broker.certs.ca, "cert_file": tls_broker.certs.client_cert,
            "key_file": tls_broker.certs.client_key}[flag]
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(pubsub_backend="mqtt", **{f"mqtt_tls_{flag}": str(path)})
    text = str(info.value)
    assert "--mqtt-tls " in text and f"--mqtt-tls-{flag.replace('_', '-')}" in text, text


def test_bad_tls_files_name_flag_and_path(tls_broker: TLSBroker) -> None:
    missing = str(tls_broker.folder / "no-such-ca.pem")
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(**tls_broker.config(mqtt_tls_ca_file=missing))
    assert "--mqtt-tls-ca-file" in str(info.value) and missing in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(**tls_broker.config(mqtt_tls_cert_file=str(tls_broker.certs.client_cert)))
    assert "--mqtt-tls-cert-file" in str(info.value) and "--mqtt-tls-key-file" in str(info.value)
    with pytest.raises(ConfigurationError, match="--mqtt-tls-ca-file"):
        get_pubsub(**tls_broker.config(mqtt_tls_ca_file=str(tls_broker.certs.client_key)))


# -- mutual TLS -----------------------------------------------------------------------------


async def test_mutual_tls(tls_broker: TLSBroker) -> None:
    certs = tls_broker.certs
    b = get_pubsub(**tls_broker.config(mqtt_port=tls_broker.mtls_port,
                                       mqtt_tls_cert_file=str(certs.client_cert),
                                       mqtt_tls_key_file=str(certs.client_key)))
    try:
        await round_trip(b, 20)
    finally:
        await b.close()
    # Without a client certificate the broker refuses: an error saying so, not a hang.
    anonymous = get_pubsub(**tls_broker.config(mqtt_port=tls_broker.mtls_port,
                                               mqtt_connect_timeout=5.0))
    start = time.monotonic()
    try:
        with pytest.raises(BrokerConnectionError) as info:
            await asyncio.wait_for(anonymous.create_producer(fresh("mtls"), Num), 30)
        print(f"no client certificate: {info.value} ({time.monotonic() - start:.2f}s)")
        assert "--mqtt-tls-cert-file" in str(info.value), str(info.value)
    finally:
        await anonymous.close()


# -- secrets -----------------------------------------------------------------------------------


async def test_the_password_never_shows(tls_broker: TLSBroker) -> None:
    texts: list[str] = []
    good = get_pubsub(**tls_broker.config(mqtt_username="someone", mqtt_password=SECRET))
    texts.append(repr(good))
    try:
        name = fresh("secret")
        p = await good.create_producer(name, Num)
        await p.send(Num(1))
        texts.append(repr(p))
    finally:
        await good.close()
    for overrides in (
        {"mqtt_tls_ca_file": str(tls_broker.certs.other_ca)},  # certificate refused
        {"mqtt_port": refused_port()},                          # nothing listens
    ):
        b = get_pubsub(**tls_broker.config(mqtt_username="someone", mqtt_password=SECRET,
                                           mqtt_connect_timeout=5.0, **overrides))
        texts.append(repr(b))
        try:
            with pytest.raises(BrokerConnectionError) as info:
                await asyncio.wait_for(b.create_producer(fresh("secret"), Num), 30)
            texts += [str(info.value), repr(info.value)]
        finally:
            await b.close()
    for bad in ({"mqtt_tls_cert_file": str(tls_broker.certs.client_cert)},
                {"mqtt_tls_ca_file": "/nonexistent/ca.pem"}):
        with pytest.raises(ConfigurationError) as cfg:
            get_pubsub(**tls_broker.config(mqtt_username="someone", mqtt_password=SECRET, **bad))
        texts.append(str(cfg.value))
    leaked = [t for t in texts if SECRET in t]
    assert not leaked, leaked
