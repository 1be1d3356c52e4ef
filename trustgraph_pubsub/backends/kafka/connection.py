"""Connecting to Kafka: making, starting and stopping the aiokafka clients.

``KafkaConnection`` is the part of ``KafkaBackend`` that holds the shared
clients (the admin client, started on first use, and one producer client per
qos level), starts every client within ``connect_timeout`` and tells refused
SASL credentials from an unreachable broker when one does not start.  It also
runs admin requests with retries (``_admin_call``) and makes the short-lived
group clients that queue lifecycle uses.  aiokafka is asyncio-native, so
there is no thread or callback to bridge; aiokafka reconnects by itself, and
a request that fails meanwhile is retried here or reported as
``ConnectionLostError`` for the caller to retry.

``KafkaBackend`` inherits this class (through ``lifecycle.KafkaLifecycle``)
and sets in its constructor every attribute declared below.
``_settle_at_end`` lives here because both the consumer and queue lifecycle
position clients with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as kerr
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn

from ...errors import (
    AuthenticationError,
    BrokerConnectionError,
    ClosedError,
    ConnectionLostError,
    PubSubError,
    UnsupportedError,
)
from ...retry import Backoff, retry
from ...tls import certificate_failure, client_context
from ...tls_probe import TlsRefusal, tls_refusal
from .config import _OVERHEAD, BATCH_BYTES, CLIENT_ID, TLS_PROTOCOLS, consumer_request_timeout_ms
from .errors import _connection_error, _is_sasl_failure, _lost


async def _settle_at_end(client: Any, tps: list[Any]) -> dict[Any, int]:
    """Move each partition's position to the true end of its log; the positions.

    ``seek_to_end`` and ``auto_offset_reset="latest"`` ask ListOffsets, and
    some brokers answer it wrongly (tansu answers one past the *first* offset
    of the last record batch, so a "latest" subscriber would get part of the
    last batch again).  The high watermark in a fetch response is right on
    every broker, so fetch once and skip to it.  Records fetched meanwhile
    were written before the subscription was made and are dropped.
    """
    while True:
        assigned = client.assignment()
        tps = [tp for tp in tps if tp in assigned]
        if all(client.highwater(tp) is not None for tp in tps):
            break
        await client.getmany(*tps, timeout_ms=100)
    out: dict[Any, int] = {}
    for tp in tps:
        pos: int = await client.position(tp)
        end: int = max(pos, client.highwater(tp))
        if end > pos:
            client.seek(tp, end)
        out[tp] = end
    return out


class KafkaConnection:
    """The backend's clients and how they are started (see the module docstring)."""

    bootstrap_servers: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    _sasl_password: str | None
    max_message_size: int
    connect_timeout: float
    request_timeout_ms: int
    fetch_max_wait_ms: int
    tls_verify_hostname: bool
    _ssl: ssl.SSLContext | None
    _admin: Any
    _clients: dict[str, Any]
    _lock: asyncio.Lock
    _closed: bool

    # -- connecting ----------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": CLIENT_ID,
            "security_protocol": self.security_protocol,
        }
        if self._ssl is not None:
            kw["ssl_context"] = self._ssl
        if self.sasl_mechanism is not None:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self._sasl_password
        return kw

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")

    async def _start_client(self, client: Any, what: str) -> None:
        """Start an aiokafka client within ``connect_timeout``, mapping failures.

        aiokafka retries some bootstrap failures for as long as its request
        timeout allows; the wait is bounded here so that a wrong address fails
        fast and resilient clients can retry with their own backoff.
        """
        try:
            async with asyncio.timeout(self.connect_timeout):
                await client.start()
        except asyncio.CancelledError:
            await self._quiet_stop(client)
            raise
        except Exception as exc:
            await self._quiet_stop(client)
            raise await self._classify(exc, what) from exc

    async def _quiet_stop(self, client: Any) -> None:
        stop = getattr(client, "stop", None) or client.close
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await stop()

    async def _classify(self, exc: BaseException, what: str) -> PubSubError:
        """Tell a certificate that did not verify, or refused credentials, from an
        unreachable broker."""
        if self.security_protocol in TLS_PROTOCOLS:
            server_cert = certificate_failure(exc)
            refusal = TlsRefusal("server", server_cert) if server_cert else await self._probe_tls()
            if refusal is not None:
                return BrokerConnectionError(
                    f"{what}: cannot connect to Kafka at {self.bootstrap_servers} over TLS: "
                    + refusal.explain("kafka", "--kafka-bootstrap-servers")
                )
        if self.sasl_mechanism is not None:
            refused = _is_sasl_failure(exc) or await self._probe_refuses_credentials()
            if refused:
                return AuthenticationError(
                    f"{what}: Kafka at {self.bootstrap_servers} refused the SASL "
                    f"{self.sasl_mechanism} credentials of user {self.sasl_username!r}; "
                    "check --kafka-sasl-username / --kafka-sasl-password "
                    "(KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)"
                )
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {self.connect_timeout:g}s (--kafka-connect-timeout)"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return BrokerConnectionError(
            f"{what}: cannot connect to Kafka at {self.bootstrap_servers} ({detail}); "
            "is the broker running and is --kafka-bootstrap-servers "
            "(KAFKA_BOOTSTRAP_SERVERS) right?"
        )

    async def _probe_tls(self) -> TlsRefusal | None:
        """One TLS handshake with the first bootstrap host: whether a certificate is
        what fails (aiokafka's bootstrap logs the reason and raises without it)."""
        first = self.bootstrap_servers.split(",")[0]
        host, _, port = first.rpartition(":")
        if self._ssl is None:
            return None
        # a handshake takes milliseconds; a listener that is not TLS never answers it
        return await tls_refusal(host or first, int(port) if host else 9092, self._ssl,
                                 min(self.connect_timeout, 5.0))

    async def _probe_refuses_credentials(self) -> bool:
        """Open one connection with SASL to see whether authentication is what fails.

        aiokafka's bootstrap folds a refused SASL exchange into a generic
        "unable to bootstrap" error.
        """
        first = self.bootstrap_servers.split(",")[0]
        host, _, port = first.rpartition(":")
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await create_conn(
                    host or first,
                    int(port) if host else 9092,
                    client_id=CLIENT_ID,
                    security_protocol=self.security_protocol,
                    ssl_context=self._ssl,
                    sasl_mechanism=self.sasl_mechanism,
                    sasl_plain_username=self.sasl_username,
                    sasl_plain_password=self._sasl_password,
                )
        except Exception as exc:
            return _is_sasl_failure(exc)
        conn.close()
        return False

    async def _connect(self) -> Any:
        """Start the admin client on first use (constructors do no I/O)."""
        self._check_open()
        if self._admin is not None:
            return self._admin
        async with self._lock:
            if self._admin is None:
                if self.security_protocol in TLS_PROTOCOLS and self._ssl is None:
                    # Loading the system CA bundle reads files: keep it off the loop.
                    self._ssl = await asyncio.to_thread(
                        client_context, None, None, None, self.tls_verify_hostname, "kafka")
                admin = AIOKafkaAdminClient(
                    **self._client_kwargs(), request_timeout_ms=int(self.connect_timeout * 1000)
                )
                await self._start_client(admin, "admin client")
                self._admin = admin
        return self._admin

    async def _producer_client(self, qos: str) -> Any:
        client = self._clients.get(qos)
        if client is not None:
            return client
        await self._connect()
        async with self._lock:
            client = self._clients.get(qos)
            if client is None:
                client = AIOKafkaProducer(
                    **self._client_kwargs(),
                    acks=0 if qos == "q0" else "all",
                    enable_idempotence=qos == "q2",
                    max_request_size=self.max_message_size + _OVERHEAD,
                    linger_ms=0,
                    max_batch_size=min(BATCH_BYTES, self.max_message_size),
                    request_timeout_ms=self.request_timeout_ms,
                )
                try:
                    await self._start_client(client, f"{qos} producer")
                except PubSubError as exc:
                    cause = exc.__cause__
                    if qos == "q2" and isinstance(cause, kerr.KafkaError) and not _connection_error(cause):
                        raise UnsupportedError(
                            f"q2 needs an idempotent producer and Kafka at "
                            f"{self.bootstrap_servers} refused one "
                            f"(InitProducerId: {type(cause).__name__}); use q1 on this broker"
                        ) from cause
                    raise
                self._clients[qos] = client
        return client

    # -- admin requests and group clients -------------------------------------

    async def _admin_call(self, fn: Any, what: str) -> Any:
        """One admin request, retried with backoff on retriable errors for ``connect_timeout``."""
        retriable = (
            kerr.KafkaConnectionError,
            kerr.NodeNotReadyError,
            kerr.RequestTimedOutError,
            kerr.KafkaTimeoutError,
            kerr.NotControllerError,
            kerr.LeaderNotAvailableError,
            kerr.CoordinatorNotAvailableError,
            kerr.NotCoordinatorError,
            TimeoutError,
        )
        try:
            return await retry(
                fn,
                retry_on=retriable,
                deadline=self.connect_timeout,
                backoff=Backoff(base=0.05, cap=1.0),
                what=f"kafka {what}",
            )
        except kerr.KafkaError as exc:
            raise _lost(exc, what) from exc
        except TimeoutError as exc:
            raise ConnectionLostError(f"{what}: Kafka did not answer in time") from exc

    async def _group_client(self, group: str) -> Any:
        """A consumer client for a group that never joins it (offset look-ups and commits)."""
        client = AIOKafkaConsumer(
            **self._client_kwargs(), group_id=group, enable_auto_commit=False,
            request_timeout_ms=consumer_request_timeout_ms(
                self.request_timeout_ms, self.fetch_max_wait_ms, group=False),
        )
        await self._start_client(client, f"group {group!r} client")
        return client
