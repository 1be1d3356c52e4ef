"""The SDK's exception hierarchy, rooted at ``PubSubError``.

Every error a backend raises for bad input or a broker failure is one of
these, with a message that names the topic, option or field at fault and,
where it helps, what to do about it.  Broker client exceptions are chained
(``raise ... from exc``) rather than leaked.
"""

from __future__ import annotations

from trustgraph_schema.errors import DecodeError, TopicError

#: one message as a producer sent it: ``(payload, properties or None, key or None)``.
Outgoing = tuple[bytes, dict[str, str] | None, str | None]


class PubSubError(Exception):
    """Base class of every SDK error.

    ``unconfirmed`` lists the messages a pipelining backend producer had
    accepted but the broker never confirmed when this error ended them (a
    send or flush raised it).  ``Producer`` sends them again after a lost
    connection and otherwise reports how many there were; it is empty
    everywhere else.
    """

    #: set on the instance by the backend that raises it
    unconfirmed: tuple[Outgoing, ...] = ()


class DeliveryError(PubSubError):
    """Messages that a caller handed over were refused or never confirmed.

    ``count`` is how many; raised by ``Publisher.flush``/``close`` and by
    ``Producer`` when a refusal (not a lost connection) ended messages it had
    already accepted from ``send``.
    """

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


class ConfigurationError(PubSubError, ValueError):
    """A bad option: unknown backend, malformed address, unsupported value."""


class BrokerConnectionError(PubSubError, ConnectionError):
    """The broker could not be reached (refused, unresolvable, timed out on connect)."""


class ConnectionLostError(BrokerConnectionError):
    """An established connection dropped; resilient clients reconnect after it."""


class AuthenticationError(PubSubError):
    """The broker refused the credentials.  The message never contains them."""


class BadTopicError(PubSubError, TopicError):
    """A topic or subscription name is malformed or forbidden by this broker."""


class MessageDecodeError(PubSubError, DecodeError):
    """A message's bytes do not decode into the consumer's schema."""


class PubSubTimeoutError(PubSubError, TimeoutError):
    """A receive, request or broker operation did not finish in time."""


class QueueNotFoundError(PubSubError, LookupError):
    """A queue or subscription that must exist does not."""


class ClosedError(PubSubError):
    """The producer, consumer or backend has been closed."""


class MessageTooLargeError(PubSubError, ValueError):
    """A message exceeds the backend's ``Capabilities.max_message_size``."""


class UnsupportedError(PubSubError, NotImplementedError):
    """The backend cannot do this (its ``Capabilities`` says so)."""


class ServiceError(PubSubError):
    """A service answered a request with an ``Error`` record.

    ``type`` and ``detail`` are the record's ``type`` (``"not-found"``,
    ``"bad-request"`` ...) and ``message``; ``service`` names who answered.
    Retrying the same request will get the same answer, unless ``type`` is
    ``"unavailable"`` (the service could not reach its store).
    """

    def __init__(self, service: str, type: str, detail: str) -> None:
        super().__init__(f"{service}: {type}: {detail}")
        self.service = service
        self.type = type
        self.detail = detail


__all__ = [
    "AuthenticationError",
    "BadTopicError",
    "BrokerConnectionError",
    "ClosedError",
    "ConfigurationError",
    "ConnectionLostError",
    "DeliveryError",
    "MessageDecodeError",
    "MessageTooLargeError",
    "Outgoing",
    "PubSubError",
    "PubSubTimeoutError",
    "QueueNotFoundError",
    "ServiceError",
    "UnsupportedError",
]
