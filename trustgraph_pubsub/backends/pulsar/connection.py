"""Driving the Pulsar client from the event loop: making the client, the
callbacks that cross from its threads into the loop, what a failed connect
found, and the consumers this process holds on each subscription."""

from __future__ import annotations

import asyncio
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import pulsar
import pulsar.asyncio as pulsar_asyncio

from ... import naming
from ...errors import ConfigurationError, PubSubError
from ...tls_probe import TlsRefusal, tls_refusal
from .config import TlsSettings, _redact
from .errors import _R


class _LoopCallback:
    """Completes a future on its loop from whatever thread the client calls back on."""

    __slots__ = ("loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self.thread:
            fn(*args)
        else:
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _settle(fut: asyncio.Future[Any], error: Callable[[Any], BaseException], result: Any,
            value: Any = None) -> None:
    if fut.done():
        return
    if result == _R.Ok:
        fut.set_result(value)
    else:
        fut.set_exception(error(result))


def _resolve(fut: asyncio.Future[Any], result: Any) -> None:
    """Hand the client's result code itself to a waiting future."""
    if not fut.done():
        fut.set_result(result)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a shared future's exception as seen (its waiters may all have gone)."""
    if not fut.cancelled():
        fut.exception()


def _make_client(host: str, api_key: str | None, operation_timeout: int,
                 listener: str | None, tls: TlsSettings) -> Any:
    """A ``pulsar.asyncio.Client`` for these options (blocking: run it in a worker thread)."""
    kwargs: dict[str, Any] = {
        "authentication": pulsar.AuthenticationToken(api_key) if api_key else None,
    }
    if host.startswith("pulsar+ssl://"):
        kwargs.update(tls.client_kwargs())
    try:
        return pulsar_asyncio.Client(
            host,
            operation_timeout_seconds=operation_timeout,
            connection_timeout_ms=min(10_000, operation_timeout * 1000),
            listener_name=listener or None,
            logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
            **kwargs,
        )
    except Exception as exc:
        raise ConfigurationError(
            f"--pulsar-host {_redact(host)!r}: the Pulsar client refused it "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _address(service_url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(service_url.split(",")[0])
    return parts.hostname or "localhost", parts.port or (6651 if parts.scheme == "pulsar+ssl" else 6650)


async def _probe(service_url: str) -> str:
    """What a plain TCP connection to the service address finds (for error messages)."""
    host, port = _address(service_url)
    try:
        async with asyncio.timeout(3):
            _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return f"connection to {host}:{port} refused"
    except (TimeoutError, OSError) as exc:
        return f"TCP connect to {host}:{port} failed: {exc or type(exc).__name__}"
    writer.close()
    return f"{host}:{port} accepts TCP connections but the Pulsar handshake did not complete"


async def _tls_problem(service_url: str, context: ssl.SSLContext) -> TlsRefusal | None:
    """Whether a certificate is why a TLS connect to the service address fails
    (the C++ client reports only ``ConnectError`` or ``Timeout``, and logs the rest)."""
    return await tls_refusal(*_address(service_url), context)


#: (service URL, native topic, subscription) -> [consumer type, consumers open]: the
#: consumers this process holds, so a busy exclusive subscription is refused here
#: (pulsar-lite drops the whole connection instead of answering ConsumerBusy).
_HELD: dict[tuple[str, str, str], list[Any]] = {}
_HELD_LOCK = threading.Lock()


def _hold(key: tuple[str, str, str], consumer_type: str, topic: str) -> None:
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None and held[1] > 0:
            if held[0] == "exclusive" or consumer_type == "exclusive":
                raise PubSubError(
                    f"subscription {key[2]!r} on topic {topic!r} already has "
                    f"{'an exclusive' if held[0] == 'exclusive' else 'a ' + held[0]} consumer "
                    "in this process (Pulsar ConsumerBusy); close it first, or use another "
                    "subscription name or consumer_type='shared'/'failover'"
                )
            if held[0] != consumer_type:
                raise PubSubError(
                    f"subscription {key[2]!r} on topic {topic!r} has {held[0]} consumers; "
                    f"a {consumer_type} consumer cannot join (use the same consumer_type "
                    "or another subscription)"
                )
            held[1] += 1
        else:
            _HELD[key] = [consumer_type, 1]


def _release(key: tuple[str, str, str]) -> None:
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:
            held[1] -= 1
            if held[1] <= 0:
                del _HELD[key]


def _held_here(host: str, topic: str, subscription: str) -> bool:
    with _HELD_LOCK:
        held = _HELD.get((host, naming.pulsar_topic(topic), subscription))
        return held is not None and held[1] > 0
