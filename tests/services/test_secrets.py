"""Known secrets given to real service processes never come out again.

``config-svc`` is started as a process with a known secret in every place
one can be given (a broker password, a SASL password, a Pulsar token, a
password inside a URL, a PostgreSQL DSN), from flags and from the
environment, logging at DEBUG with its Prometheus endpoint on.  Each run
either serves or fails on the way (refused credentials, a closed port); then
everything it wrote (stdout, stderr, logs) and its metrics page are searched
for the secret.  In-process, the reprs and error texts of every backend
built with those secrets are searched too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bootstrap.config_service import PostgresStore
from bootstrap.embedded import free_port
from tests.brokers import refused_port
from tests.services.helpers import PG_DSN, drop_schema, pg_schema
from trustgraph_pubsub import get_pubsub

SECRET = "Zq9s3cr3tPw7"
BIN = Path(sys.executable).parent
RUN_FOR = 6.0  # long enough to connect, fail and retry at least once


def _pg_with_password(dsn: str, password: str, port: int | None = None) -> str:
    """``PG_DSN`` with a password (ignored under trust auth) and maybe another port."""
    scheme, rest = dsn.split("://", 1)
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.split(":", 1)[0] or "postgres"
    host, _, db = hostpart.partition("/")
    if port is not None:
        host = f"{host.rsplit(':', 1)[0]}:{port}"
    return f"{scheme}://{user}:{password}@{host}/{db}"


def cases(closed: int, schema: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """(label, flags, extra environment) for each way a secret can be given."""
    pg = ["--config-store", "postgres", "--postgres-schema", schema]
    return [
        ("rabbitmq password refused", ["--pubsub-backend", "rabbitmq", "--rabbitmq-host", "127.0.0.1",
                                       "--rabbitmq-password", SECRET], {}),
        ("rabbitmq password from env", ["--pubsub-backend", "rabbitmq", "--rabbitmq-host", "127.0.0.1"],
         {"RABBITMQ_PASSWORD": SECRET}),
        ("kafka sasl password", ["--pubsub-backend", "kafka", "--kafka-bootstrap-servers",
                                 f"127.0.0.1:{closed}", "--kafka-security-protocol", "SASL_PLAINTEXT",
                                 "--kafka-sasl-username", "u", "--kafka-sasl-password", SECRET], {}),
        ("pulsar token", ["--pubsub-backend", "pulsar", "--pulsar-host", f"pulsar://127.0.0.1:{closed}",
                          "--pulsar-api-key", SECRET], {}),
        ("pulsar url with a password", ["--pubsub-backend", "pulsar", "--pulsar-host",
                                        f"pulsar://admin:{SECRET}@127.0.0.1:{closed}"], {}),
        ("mqtt password", ["--pubsub-backend", "mqtt", "--mqtt-host", "127.0.0.1", "--mqtt-port",
                           str(closed), "--mqtt-username", "u", "--mqtt-password", SECRET], {}),
        ("postgres dsn, served", ["--pubsub-backend", "memory", *pg, "--postgres-dsn",
                                  _pg_with_password(PG_DSN, SECRET)], {}),
        ("postgres dsn, refused", ["--pubsub-backend", "memory", *pg, "--postgres-dsn",
                                   _pg_with_password(PG_DSN, SECRET, closed)], {}),
        ("postgres dsn from env", ["--pubsub-backend", "memory", *pg],
         {"POSTGRES_DSN": _pg_with_password(PG_DSN, SECRET, closed)}),
    ]


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                                start_new_session=True)


async def _run(label: str, flags: list[str], env: dict[str, str], tmp: Path) -> tuple[str, str]:
    """Run config-svc for ``RUN_FOR`` seconds (or until it exits); its output and metrics page."""
    log = tmp / f"{label.replace(' ', '-').replace(',', '')}.log"
    port = free_port()
    args = [str(BIN / "config-svc"), *flags, "--log-level", "DEBUG", "--metrics-port", str(port),
            "--config-db", str(tmp / f"{port}.db")]
    proc = _spawn(args, log, env)
    metrics = ""
    try:
        for _ in range(int(RUN_FOR * 10)):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            def scrape() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return str(r.read().decode())
            try:
                metrics = await asyncio.to_thread(scrape)
            except OSError:
                metrics = ""
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text(errors="replace"), metrics


async def test_no_secret_in_any_output_of_a_service_process(tmp_path: Path) -> None:
    schema = await pg_schema()  # skips (or fails under TG_REQUIRE_BROKERS) without PostgreSQL
    closed = refused_port()
    runs = cases(closed, schema)
    try:
        results = await asyncio.gather(*(_run(label, flags, env, tmp_path) for label, flags, env in runs))
    finally:
        await drop_schema(schema)
    served = 0
    for (label, _, _), (output, metrics) in zip(runs, results, strict=True):
        assert output, f"{label}: the service wrote nothing at DEBUG"
        assert SECRET not in output, f"{label}: the secret is in the service's output:\n{output[-2000:]}"
        assert SECRET not in metrics, f"{label}: the secret is in the metrics page"
        served += bool(metrics)
    # The runs that can serve did, so their metrics pages were really searched.
    assert served >= 1


@pytest.mark.parametrize("config", [
    {"pubsub_backend": "rabbitmq", "rabbitmq_password": SECRET},
    {"pubsub_backend": "kafka", "kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u",
     "kafka_sasl_password": SECRET},
    {"pubsub_backend": "pulsar", "pulsar_api_key": SECRET},
    {"pubsub_backend": "pulsar", "pulsar_admin_url": f"http://admin:{SECRET}@127.0.0.1:1"},
    {"pubsub_backend": "mqtt", "mqtt_username": "u", "mqtt_password": SECRET},
])
def test_backend_reprs_hide_secrets(config: dict[str, Any]) -> None:
    backend = get_pubsub(**config)
    assert SECRET not in repr(backend) and SECRET not in str(backend)


async def test_a_refused_postgres_dsn_error_hides_the_password() -> None:
    store = PostgresStore(_pg_with_password(PG_DSN, SECRET, refused_port()), schema="tg_secret_test")
    assert SECRET not in repr(store)
    with pytest.raises(Exception) as info:  # any failure: its text is what counts
        await store.open()
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    for cause in (info.value.__cause__, info.value.__context__):
        assert cause is None or SECRET not in str(cause)
