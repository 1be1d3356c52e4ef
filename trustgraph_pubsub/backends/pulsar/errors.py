"""How the Pulsar client's result codes map onto the SDK's errors
(``trustgraph_pubsub.errors``)."""

from __future__ import annotations

from typing import Any

import _pulsar  # type: ignore[import-not-found]  # pulsar-client's C extension

from ...errors import (
    AuthenticationError,
    BadTopicError,
    BrokerConnectionError,
    ClosedError,
    ConnectionLostError,
    MessageTooLargeError,
    PubSubError,
    QueueNotFoundError,
)
from .config import _redact

_R = _pulsar.Result
#: the C++ client's ResultDisconnected (its connection dropped while a request was
#: outstanding), which the Python binding of pulsar-client 3.13 has no name for:
#: it shows as ``???``.  Seen in CI as an ``unsubscribe`` the broker cut short.
_DISCONNECTED = _R(46)
_CONNECTION_RESULTS = frozenset({
    _R.ConnectError, _R.NotConnected, _R.ReadError, _R.Timeout, _R.LookupError,
    _R.ServiceUnitNotReady, _R.TooManyLookupRequestException, _R.BrokerMetadataError,
    _R.BrokerPersistenceError, _R.Interrupted, _DISCONNECTED,
})
_AUTH_RESULTS = frozenset({
    _R.AuthenticationError, _R.AuthorizationError, _R.ErrorGettingAuthenticationData,
})


def _client_error(result: Any, what: str, host: str, operation_timeout: int, *,
                  after_connect: bool, probe: str = "") -> PubSubError:
    """The SDK exception for a client result code; never mentions the token."""
    name = getattr(result, "name", str(result))
    if name == "???":  # a code the binding has no name for
        name = "Disconnected" if result == _DISCONNECTED else f"result code {int(result)}"
    where = _redact(host)
    if result in _AUTH_RESULTS:
        return AuthenticationError(
            f"Pulsar at {where} rejected the credentials ({name}) on {what}: "
            "check --pulsar-api-key (the token) and its permissions"
        )
    if result == _R.MessageTooBig:
        return MessageTooLargeError(
            f"{what}: Pulsar refused the message as too big ({name}): the broker's "
            "maxMessageSize is below --pulsar-max-message-size; lower that option to the "
            "broker's limit, or create the producer with chunking=True"
        )
    if result == _R.InvalidTopicName:
        return BadTopicError(f"{what}: Pulsar refused the topic name ({name})")
    if result in (_R.TopicNotFound, _R.SubscriptionNotFound):
        return QueueNotFoundError(f"{what}: {name} on Pulsar at {where}")
    if result in (_R.AlreadyClosed, _R.ConsumerNotInitialized, _R.ProducerNotInitialized):
        if after_connect:
            return ConnectionLostError(
                f"{what}: the Pulsar client closed it ({name}); recreate it"
            )
        return ClosedError(f"{what}: the Pulsar client is closed ({name})")
    if result in (_R.ConsumerBusy, _R.ProducerBusy, _R.ProducerFenced):
        return PubSubError(
            f"{what}: Pulsar says the subscription or topic is busy ({name}): an exclusive "
            "consumer or producer already holds it"
        )
    if result == _R.TopicTerminated:
        return PubSubError(
            f"{what}: the topic is terminated on Pulsar at {where} ({name}) and accepts no "
            "more messages; publish to another topic"
        )
    if result in _CONNECTION_RESULTS:
        if after_connect:
            return ConnectionLostError(f"{what}: lost Pulsar at {where} ({name})")
        found = f"; {probe}" if probe else ""
        return BrokerConnectionError(
            f"could not reach Pulsar at {where} to {what} within "
            f"{operation_timeout}s ({name}{found}): is the broker running and "
            "--pulsar-host right?"
        )
    return PubSubError(f"{what}: Pulsar answered {name}")
