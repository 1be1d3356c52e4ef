"""Errors raised by the wire contract.

They live here, not in the SDK, because ``trustgraph_schema`` imports nothing
from ``trustgraph_pubsub``.  The SDK's own hierarchy subclasses them
(``trustgraph_pubsub.BadTopicError`` is a ``TopicError``), so a caller may
catch either name.
"""

from __future__ import annotations


class SchemaError(ValueError):
    """Base class of every error the wire contract raises."""


class TopicError(SchemaError):
    """A generic topic name is malformed; the message names the bad part."""


class DecodeError(SchemaError):
    """Bytes could not be decoded into a schema; ``path`` names the field at fault."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class EncodeError(SchemaError, TypeError):
    """A message could not be encoded; ``path`` names the field at fault.

    Also a ``TypeError``: handing the codec a value of the wrong type is the
    classic case, and callers that catch ``TypeError`` keep working.
    """

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)
