"""``trustgraph_pubsub.tls``: the one client ``SSLContext`` builder and the
certificate-failure finder every backend uses."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers.tls import Certs, make_certs
from trustgraph_pubsub import ConfigurationError
from trustgraph_pubsub.tls import certificate_failure, client_context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_system_authorities_when_no_ca_file() -> None:
    ctx = client_context(None, None, None, True, "rabbitmq")
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.cert_store_stats()["x509_ca"] >= 0  # the default paths, whatever they hold


def test_ca_file_is_trusted(certs: Certs) -> None:
    ctx = client_context(str(certs.ca), None, None, True, "mqtt")
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_hostname_check_can_be_turned_off_but_verification_stays(certs: Certs) -> None:
    ctx = client_context(str(certs.ca), None, None, False, "mqtt")
    assert ctx.check_hostname is False
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_empty_strings_mean_not_given() -> None:
    ctx = client_context("", "", "", True, "rabbitmq")
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_missing_ca_file_names_flag_and_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.pem"
    with pytest.raises(ConfigurationError) as info:
        client_context(str(path), None, None, True, "rabbitmq")
    assert "--rabbitmq-tls-ca-file" in str(info.value)
    assert str(path) in str(info.value)


def test_garbage_ca_file_names_flag_and_path(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError) as info:
        client_context(str(path), None, None, True, "kafka")
    assert "--kafka-tls-ca-file" in str(info.value)
    assert str(path) in str(info.value)


def test_ca_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--mqtt-tls-ca-file"):
        client_context(str(tmp_path), None, None, True, "mqtt")


@pytest.mark.parametrize("which", ["cert", "key"])
def test_cert_and_key_go_together(certs: Certs, which: str) -> None:
    cert = str(certs.client_cert) if which == "cert" else None
    key = str(certs.client_key) if which == "key" else None
    with pytest.raises(ConfigurationError) as info:
        client_context(str(certs.ca), cert, key, True, "rabbitmq")
    assert "--rabbitmq-tls-cert-file" in str(info.value)
    assert "--rabbitmq-tls-key-file" in str(info.value)


def test_client_certificate_loads(certs: Certs) -> None:
    client_context(str(certs.ca), str(certs.client_cert), str(certs.client_key), True, "mqtt")


def test_missing_client_key_names_flag_and_path(certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "missing.key"
    with pytest.raises(ConfigurationError) as info:
        client_context(str(certs.ca), str(certs.client_cert), str(path), True, "mqtt")
    assert "--mqtt-tls-key-file" in str(info.value)
    assert str(path) in str(info.value)


def test_key_file_that_is_a_certificate(certs: Certs) -> None:
    with pytest.raises(ConfigurationError) as info:
        client_context(str(certs.ca), str(certs.client_cert), str(certs.ca), True, "mqtt")
    assert "--mqtt-tls-key-file" in str(info.value)
    assert str(certs.ca) in str(info.value)


def test_key_of_another_certificate(certs: Certs) -> None:
    with pytest.raises(ConfigurationError) as info:
        client_context(str(certs.ca), str(certs.client_cert), str(certs.server_key), True, "mqtt")
    assert "--mqtt-tls-key-file" in str(info.value)
    assert "--mqtt-tls-cert-file" in str(info.value)


def test_cert_file_that_is_a_key(certs: Certs) -> None:
    with pytest.raises(ConfigurationError) as info:
        client_context(str(certs.ca), str(certs.client_key), str(certs.client_key), True, "mqtt")
    assert "--mqtt-tls-cert-file" in str(info.value)
    assert str(certs.client_key) in str(info.value)


# -- certificate_failure ------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[int]:
    """A loopback TLS server with ``certs``' server certificate; accepts and hangs up."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(5)
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(5)
    listener.close()


def _handshake(ctx: ssl.SSLContext, port: int, name: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=name):
            pass


def test_trusted_server_handshakes(certs: Certs, tls_server: int) -> None:
    _handshake(client_context(str(certs.ca), None, None, True, "x"), tls_server, "localhost")


def test_untrusted_server_is_a_certificate_failure(certs: Certs, tls_server: int) -> None:
    ctx = client_context(str(certs.other_ca), None, None, True, "x")
    with pytest.raises(ssl.SSLError) as info:
        _handshake(ctx, tls_server, "localhost")
    reason = certificate_failure(info.value)
    assert reason is not None
    assert reason.startswith("certificate verify failed: ")
    assert "issuer" in reason  # "unable to get local issuer certificate"
    # wrapped, chained, or carried in another exception's args: still found
    try:
        raise ConnectionError("connect failed") from info.value
    except ConnectionError as outer:
        assert certificate_failure(outer) == reason
    assert certificate_failure(RuntimeError("wrapped", (info.value,))) == reason


def test_wrong_hostname_is_a_certificate_failure(certs: Certs, tls_server: int) -> None:
    ctx = client_context(str(certs.ca), None, None, True, "x")
    with pytest.raises(ssl.SSLError) as info:
        _handshake(ctx, tls_server, "not-the-server.example")
    reason = certificate_failure(info.value)
    assert reason is not None and "not-the-server.example" in reason
    # with the name check off, the same server is accepted
    _handshake(client_context(str(certs.ca), None, None, False, "x"), tls_server,
               "not-the-server.example")


def test_other_errors_are_not_certificate_failures() -> None:
    assert certificate_failure(None) is None
    assert certificate_failure(ConnectionRefusedError(111, "Connection refused")) is None
    assert certificate_failure(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version")) is None


def test_flattened_text_is_recognised() -> None:
    exc = OSError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                  "self-signed certificate (_ssl.c:1006)")
    assert certificate_failure(exc) == "certificate verify failed: self-signed certificate"
