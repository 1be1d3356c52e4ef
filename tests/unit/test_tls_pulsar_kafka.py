"""The TLS options of the Pulsar and Kafka backends, without a broker: every
refused setting names its flag (from arguments and from the environment), and
the client objects are built with the TLS arguments the options say.

End to end (real TLS through a TLS-terminating proxy in front of pulsar-lite
and tansu): ``tests/backends/test_tls_pulsar_kafka.py``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pulsar
import pytest

from tests.brokers.tls import Certs, make_certs
from trustgraph_pubsub import ConfigurationError, get_pubsub
from trustgraph_pubsub.backends.pulsar import connection as pulsar_connection
from trustgraph_pubsub.backends.pulsar.config import TlsSettings

SSL_HOST = "pulsar+ssl://localhost:6651"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def _no_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for backend in ("PULSAR", "KAFKA"):
        for name in ("CA_FILE", "CERT_FILE", "KEY_FILE", "VERIFY_HOSTNAME"):
            monkeypatch.delenv(f"{backend}_TLS_{name}", raising=False)
    for name in ("PULSAR_HOST", "PULSAR_API_KEY", "KAFKA_SECURITY_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)


def refused(**config: Any) -> str:
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(**config)
    return str(info.value)


def ca_names(ctx: ssl.SSLContext) -> list[str]:
    return [dict(x[0] for x in c["subject"])["commonName"] for c in ctx.get_ca_certs()]


# -- TLS files while TLS is off ----------------------------------------------------------


@pytest.mark.parametrize("name", ["ca_file", "cert_file", "key_file"])
def test_pulsar_tls_file_with_a_plain_url_names_the_host_flag(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = f"--pulsar-tls-{name.replace('_', '-')}"
    text = refused(pubsub_backend="pulsar", pulsar_host="pulsar://localhost:6650", **{f"pulsar_tls_{name}": "/x.pem"})
    assert flag in text and "--pulsar-host" in text and "pulsar+ssl://" in text, text
    monkeypatch.setenv(f"PULSAR_TLS_{name.upper()}", "/from-env.pem")
    text = refused(pubsub_backend="pulsar")  # the default host is pulsar://
    assert flag in text and "--pulsar-host" in text and "/from-env.pem" in text, text


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
@pytest.mark.parametrize("name", ["ca_file", "cert_file", "key_file"])
def test_kafka_tls_file_without_ssl_names_the_protocol_flag(
    name: str, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = f"--kafka-tls-{name.replace('_', '-')}"
    sasl = {"kafka_sasl_username": "u", "kafka_sasl_password": "p"} if protocol.startswith("SASL") else {}
    text = refused(pubsub_backend="kafka", kafka_security_protocol=protocol, **sasl,
                   **{f"kafka_tls_{name}": "/x.pem"})
    assert flag in text and "--kafka-security-protocol" in text and protocol in text, text
    monkeypatch.setenv(f"KAFKA_TLS_{name.upper()}", "/from-env.pem")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", protocol)
    text = refused(pubsub_backend="kafka", **sasl)
    assert flag in text and "--kafka-security-protocol" in text, text


def test_an_empty_tls_file_setting_is_no_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSAR_TLS_CA_FILE", "")
    monkeypatch.setenv("KAFKA_TLS_CA_FILE", "")
    get_pubsub(pubsub_backend="pulsar")
    get_pubsub(pubsub_backend="kafka")


# -- bad files, by flag and path ---------------------------------------------------------


def _tls_config(backend: str, **files: Any) -> dict[str, Any]:
    on = {"pulsar_host": SSL_HOST} if backend == "pulsar" else {"kafka_security_protocol": "SSL"}
    return {"pubsub_backend": backend, **on, **{f"{backend}_tls_{k}": str(v) for k, v in files.items()}}


@pytest.mark.parametrize("backend", ["pulsar", "kafka"])
def test_bad_files_name_their_flag_and_path(backend: str, certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ({"ca_file": missing}, f"--{backend}-tls-ca-file", str(missing)),
        ({"ca_file": garbage}, f"--{backend}-tls-ca-file", str(garbage)),
        ({"cert_file": certs.client_cert}, f"--{backend}-tls-key-file", f"--{backend}-tls-cert-file"),
        ({"key_file": certs.client_key}, f"--{backend}-tls-cert-file", f"--{backend}-tls-key-file"),
        ({"cert_file": garbage, "key_file": certs.client_key}, f"--{backend}-tls-cert-file", str(garbage)),
        ({"cert_file": certs.client_cert, "key_file": certs.server_key}, f"--{backend}-tls-key-file",
         str(certs.server_key)),
    ]
    for files, must, also in cases:
        text = refused(**_tls_config(backend, **files))
        assert must in text and also in text, (files, text)


@pytest.mark.parametrize("backend", ["pulsar", "kafka"])
def test_verify_hostname_from_env_is_a_bool(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{backend.upper()}_TLS_VERIFY_HOSTNAME", "perhaps")
    text = refused(**_tls_config(backend))
    assert f"--{backend}-tls-verify-hostname" in text, text


def test_pulsar_client_certificate_and_token_conflict(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "eyJ-not-a-real-token-5c1d"
    config = _tls_config("pulsar", cert_file=certs.client_cert, key_file=certs.client_key)
    text = refused(**config, pulsar_api_key=secret)
    assert "--pulsar-tls-cert-file" in text and "--pulsar-api-key" in text and secret not in text, text
    monkeypatch.setenv("PULSAR_API_KEY", secret)
    text = refused(**config)
    assert "--pulsar-api-key" in text and secret not in text, text


# -- what the clients are given ----------------------------------------------------------


async def test_kafka_clients_get_the_context_of_the_options(certs: Certs) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    b: Any = get_pubsub(**_tls_config("kafka", ca_file=certs.ca, cert_file=certs.client_cert,
                                      key_file=certs.client_key), kafka_tls_verify_hostname="false")
    ctx = b._ssl
    assert isinstance(ctx, ssl.SSLContext)
    assert ca_names(ctx) == ["trustgraph-pubsub test ca"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is False
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    kwargs = b._client_kwargs()
    assert kwargs["security_protocol"] == "SSL" and kwargs["ssl_context"] is ctx
    # the real aiokafka clients keep it for every connection they open
    producer = AIOKafkaProducer(**kwargs)
    consumer = AIOKafkaConsumer(**kwargs)
    admin = AIOKafkaAdminClient(**kwargs)
    try:
        for client in (producer.client, consumer._client, admin._client):
            assert client._ssl_context is ctx and client._security_protocol == "SSL"
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()
    await b.close()


async def test_kafka_ssl_without_files_trusts_the_system_and_checks_names() -> None:
    b: Any = get_pubsub(pubsub_backend="kafka", kafka_security_protocol="SASL_SSL",
                        kafka_sasl_username="u", kafka_sasl_password="p",
                        kafka_bootstrap_servers="127.0.0.1:1", kafka_connect_timeout=0.5)
    assert b._ssl is None  # the system's authorities are loaded off the loop, on connect
    with pytest.raises(Exception):  # noqa: B017 - nothing listens; only the context matters here
        await b._connect()
    assert isinstance(b._ssl, ssl.SSLContext)
    assert b._ssl.check_hostname and b._ssl.verify_mode == ssl.CERT_REQUIRED
    assert b._ssl.cert_store_stats()["x509_ca"] == len(ssl.create_default_context().get_ca_certs())
    await b.close()


def test_pulsar_client_is_made_with_the_tls_arguments(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    made: dict[str, Any] = {}

    def client(url: str, **kwargs: Any) -> str:
        made.update(kwargs, url=url)
        return "client"

    monkeypatch.setattr(pulsar_connection.pulsar_asyncio, "Client", client)
    tls = TlsSettings(str(certs.ca), str(certs.client_cert), str(certs.client_key), verify_hostname=True)
    assert pulsar_connection._make_client(SSL_HOST, None, 10, None, tls) == "client"
    assert made["tls_trust_certs_file_path"] == str(certs.ca)
    assert made["tls_validate_hostname"] is True and made["tls_allow_insecure_connection"] is False
    assert isinstance(made["authentication"], pulsar.AuthenticationTLS)

    made.clear()
    pulsar_connection._make_client(SSL_HOST, "token", 10, None, TlsSettings(verify_hostname=False))
    assert isinstance(made["authentication"], pulsar.AuthenticationToken)
    assert made["tls_validate_hostname"] is False
    # no CA file: the system's bundle (what an ssl context trusts), not certifi's
    assert made.get("tls_trust_certs_file_path") == ssl.get_default_verify_paths().cafile

    made.clear()
    pulsar_connection._make_client("pulsar://localhost:6650", None, 10, None, TlsSettings())
    assert not any(k.startswith("tls_") for k in made) and made["authentication"] is None


def test_pulsar_backend_loads_the_files_at_once(certs: Certs) -> None:
    b: Any = get_pubsub(**_tls_config("pulsar", ca_file=certs.ca, cert_file=certs.client_cert,
                                      key_file=certs.client_key))
    assert isinstance(b._ssl, ssl.SSLContext) and ca_names(b._ssl) == ["trustgraph-pubsub test ca"]
    assert "auth=tls-certificate" in repr(b) and str(certs.client_key) not in repr(b)
