"""pika's exceptions as the SDK's errors (``trustgraph_pubsub.errors``).

Also the log filter that keeps pika quiet about the 404 which answers "does
this queue exist?", the only way AMQP has to ask.
"""

from __future__ import annotations

import logging
import re
import ssl
import weakref
from typing import Any

import pika.exceptions

from ...errors import (
    AuthenticationError,
    ClosedError,
    ConfigurationError,
    ConnectionLostError,
    PubSubError,
    PubSubTimeoutError,
    QueueNotFoundError,
)
from ...tls import certificate_failure
from .config import RPC_TIMEOUT


class _ExpectedNotFound(logging.Filter):
    """Drop pika's WARNING for a 404 (or 405, another connection's exclusive
    queue) on a channel that only looked a name up.

    A passive declare is the only way AMQP answers "does this queue exist?",
    and the broker answers "no" by closing the channel; that is an answer, not
    a warning.  Only channels registered here are filtered, so any other
    channel closed by the broker is still logged by pika.
    """

    def __init__(self) -> None:
        super().__init__()
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 3 and args[0] in (404, 405):
            try:
                return args[2] not in self.channels
            except TypeError:
                return True
        return True


_LOOKUPS = _ExpectedNotFound()
logging.getLogger("pika.channel").addFilter(_LOOKUPS)


def _is_connection_error(exc: BaseException) -> bool:
    """A dropped connection or a channel that is gone with it."""
    return isinstance(
        exc,
        (
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.ChannelClosed,
            pika.exceptions.ChannelWrongStateError,
            OSError,
        ),
    )


def _translate_error(exc: BaseException, what: str, username: str, where: str) -> PubSubError:
    """A pika (or asyncio) failure as the SDK's own exception, naming ``what``."""
    if isinstance(exc, PubSubError):
        return exc
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        code, text = exc.reply_code, exc.reply_text
        if code == 404:
            return QueueNotFoundError(f"{what}: {text}")
        if code == 406:
            return ConfigurationError(
                f"{what}: RabbitMQ refused it: {text}.  A queue keeps the arguments it was "
                "declared with (a topic has one qos: q0 queues are classic and transient, "
                "q1/q2 queues are durable quorum queues); delete it to redeclare it"
            )
        if code in (403, 405) and "exclusive" in text:
            return PubSubError(
                f"{what}: the queue is in exclusive use by another connection ({text})"
            )
        if code == 403:
            return AuthenticationError(
                f"{what}: user {username!r} may not do this on RabbitMQ at "
                f"{where} ({text})"
            )
        return PubSubError(f"{what}: RabbitMQ closed the channel ({code} {text})")
    if isinstance(exc, pika.exceptions.ChannelClosedByClient):
        return ClosedError(f"{what}: closed")
    if isinstance(exc, TimeoutError):
        return PubSubTimeoutError(
            f"{what}: RabbitMQ at {where} did not answer within {RPC_TIMEOUT:.0f}s"
        )
    if _is_connection_error(exc):
        return ConnectionLostError(
            f"{what}: connection to RabbitMQ at {where} lost ({_reason(exc)})"
        )
    return PubSubError(f"{what}: {type(exc).__name__}: {_reason(exc)}")


#: a broker's TLS alert about the client's certificate (none given, or not
#: trusted); pika flattens it into a ``StreamLostError``'s text, so it is read there
_CLIENT_CERT_ALERT = re.compile(
    r"\b(?:tls|ssl)v\d+ alert (?:certificate required|bad certificate|unknown ca|"
    r"certificate unknown|certificate expired|certificate revoked|unsupported certificate)"
)


def _connect_failure(exc: BaseException, where: str, tls: bool) -> str:
    """What a ``BrokerConnectionError`` says about a failed connect to ``where``:
    the innermost cause, and for a broker certificate that did not verify, why
    and which flags to check (never a bare ``ssl.SSLError``)."""
    inner = _innermost(exc)
    cert = certificate_failure(inner) or certificate_failure(exc)
    if cert is not None:
        return (
            f"cannot connect to RabbitMQ at {where}: the broker's TLS certificate failed "
            f"verification ({cert}); check that --rabbitmq-tls-ca-file (RABBITMQ_TLS_CA_FILE) "
            "holds the authority that signed it and that --rabbitmq-host is a name in it "
            "(or --rabbitmq-tls-verify-hostname false)"
        )
    alert = _CLIENT_CERT_ALERT.search(str(inner)) if tls else None
    if alert is not None:
        return (
            f"cannot connect to RabbitMQ at {where}: the broker wants a TLS client certificate "
            f"signed by an authority it trusts ({alert.group(0)}); give one with "
            "--rabbitmq-tls-cert-file and --rabbitmq-tls-key-file "
            "(RABBITMQ_TLS_CERT_FILE/RABBITMQ_TLS_KEY_FILE)"
        )
    if tls and isinstance(inner, ssl.SSLError):
        return (
            f"cannot connect to RabbitMQ at {where}: TLS handshake failed ({_connect_reason(exc)}); "
            "is --rabbitmq-port (RABBITMQ_PORT) the broker's amqps listener (usually 5671)?"
        )
    return (
        f"cannot connect to RabbitMQ at {where}: {_connect_reason(exc)}; is the broker "
        "running? check --rabbitmq-host/--rabbitmq-port (RABBITMQ_HOST/RABBITMQ_PORT)"
    )


def _innermost(exc: BaseException) -> BaseException:
    """The innermost cause of a failed pika connection workflow (a ``ConnectionRefusedError``,
    an ``ssl.SSLCertVerificationError`` ...), through pika's wrappers."""
    seen = 0
    while seen < 5:
        seen += 1
        inner = getattr(exc, "exceptions", None)
        if inner:
            exc = inner[-1]
            continue
        inner = getattr(exc, "exception", None)
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if (
            isinstance(exc, pika.exceptions.AMQPConnectionError)
            and exc.args
            and isinstance(exc.args[0], BaseException)
        ):
            exc = exc.args[0]
            continue
        break
    return exc


def _connect_reason(exc: BaseException) -> str:
    """The innermost cause of a failed pika connection workflow ("Connection refused")."""
    exc = _innermost(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    """A pika exception as short text (pika's own ``str`` of some is empty)."""
    text = str(exc) or repr(exc)
    return text.replace("\n", " ")[:500]
