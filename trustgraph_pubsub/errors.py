"""The SDK's exception hierarchy, rooted at ``PubSubError``.

Every error a backend raises for bad input or a broker failure is one of
these, with a message that names the topic, option or field at fault and,
where it helps, what to do about it.  Broker client exceptions are chained
(``raise ... from exc``) rather than leaked.
"""

from __future__ import annotations

from trustgraph_schema.errors import DecodeError, TopicError


class PubSubError(Exception):
    """Base class of every SDK error."""


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


__all__ = [
    "AuthenticationError",
    "BadTopicError",
    "BrokerConnectionError",
    "ClosedError",
    "ConfigurationError",
    "ConnectionLostError",
    "MessageDecodeError",
    "MessageTooLargeError",
    "PubSubError",
    "PubSubTimeoutError",
    "QueueNotFoundError",
    "UnsupportedError",
]
