"""Mapping aiokafka's exceptions and the broker's error codes onto the SDK's errors.

``_lost`` maps an error raised by a client after connecting, ``_code_error``
a per-resource error code in an admin response; ``_is_sasl_failure`` and
``_connection_error`` sort errors raised while connecting (see
``connection.KafkaConnection._classify``).
"""

from __future__ import annotations

from aiokafka import errors as kerr

from ...errors import (
    AuthenticationError,
    BadTopicError,
    ConfigurationError,
    ConnectionLostError,
    MessageTooLargeError,
    PubSubError,
)

_SASL_FAILURES: tuple[type[BaseException], ...] = (
    kerr.SaslAuthenticationFailed,
    kerr.AuthenticationFailedError,
    kerr.UnsupportedSaslMechanismError,
    kerr.IllegalSaslStateError,
)
#: Kafka's error codes NON_EMPTY_GROUP and GROUP_ID_NOT_FOUND, as a DeleteGroups
#: response carries them.
_NON_EMPTY_GROUP = 68
_GROUP_NOT_FOUND = 69


def _is_sasl_failure(exc: BaseException) -> bool:
    """True for errors raised by a SASL exchange the broker refused.

    aiokafka's SCRAM code raises ``KeyError``/``ValueError`` when the server's
    final message carries an error instead of its signature.
    """
    return isinstance(exc, (*_SASL_FAILURES, KeyError, ValueError))


def _connection_error(exc: BaseException) -> bool:
    return isinstance(
        exc,
        (
            kerr.KafkaConnectionError,
            kerr.KafkaTimeoutError,
            kerr.NodeNotReadyError,
            kerr.RequestTimedOutError,
            OSError,
            TimeoutError,
        ),
    )


def _lost(exc: BaseException, what: str) -> PubSubError:
    """Map an aiokafka error raised after connecting to the SDK's exceptions."""
    if isinstance(exc, kerr.MessageSizeTooLargeError):
        return MessageTooLargeError(f"{what}: the broker refused the message as too large ({exc})")
    if _connection_error(exc) or getattr(exc, "retriable", False):
        return ConnectionLostError(f"{what}: connection to Kafka lost ({type(exc).__name__}: {exc})")
    if isinstance(
        exc,
        (
            kerr.TopicAuthorizationFailedError,
            kerr.GroupAuthorizationFailedError,
            kerr.ClusterAuthorizationFailedError,
        ),
    ):
        return AuthenticationError(f"{what}: not authorised by the broker ({type(exc).__name__})")
    return PubSubError(f"{what}: Kafka error {type(exc).__name__}: {exc}")


def _code_error(
    code: int,
    what: str,
    message: str | None = None,
    *,
    partitions: int,
    replication_factor: int,
) -> PubSubError:
    """An SDK exception for a per-resource error code in an admin response.

    ``partitions`` and ``replication_factor`` are the backend's settings, named
    in the message when the broker refuses them.
    """
    err = kerr.for_code(code)
    detail = f"{err.__name__}" + (f": {message}" if message else "")
    if code == kerr.InvalidTopicError.errno:
        return BadTopicError(f"{what}: the broker refused the name ({detail})")
    if code == kerr.InvalidPartitionsError.errno:
        return ConfigurationError(f"{what}: bad --kafka-partitions {partitions} ({detail})")
    if code == kerr.InvalidReplicationFactorError.errno:
        return ConfigurationError(
            f"{what}: bad --kafka-replication-factor {replication_factor} ({detail}); "
            "it cannot exceed the number of brokers"
        )
    if code == kerr.InvalidConfigurationError.errno:
        return ConfigurationError(
            f"{what}: the broker refused the topic config ({detail}); check "
            "--kafka-retention-ms and --kafka-max-message-size"
        )
    if code in (
        kerr.TopicAuthorizationFailedError.errno,
        kerr.GroupAuthorizationFailedError.errno,
        kerr.ClusterAuthorizationFailedError.errno,
    ):
        return AuthenticationError(f"{what}: not authorised by the broker ({detail})")
    return PubSubError(f"{what}: the broker answered {detail}")


class _Superseded(Exception):
    """A settle that cannot succeed in this generation (the group rebalanced, or the consumer closes)."""


#: the group moved on: the member's assignment is stale and a new one is coming.
_REBALANCED = (
    kerr.CommitFailedError, kerr.RebalanceInProgressError,
    kerr.IllegalGenerationError, kerr.UnknownMemberIdError,
)
