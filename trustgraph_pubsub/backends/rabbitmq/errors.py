"""pika's exceptions as the SDK's errors (``trustgraph_pubsub.errors``).

Also the log filter that keeps pika quiet about the 404 which answers "does
this queue exist?", the only way AMQP has to ask.
"""

from __future__ import annotations

import logging
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


def _connect_reason(exc: BaseException) -> str:
    """The innermost cause of a failed pika connection workflow ("Connection refused")."""
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
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    """A pika exception as short text (pika's own ``str`` of some is empty)."""
    text = str(exc) or repr(exc)
    return text.replace("\n", " ")[:500]
