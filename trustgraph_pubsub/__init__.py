"""trustgraph-pubsub: broker-neutral async pub/sub for TrustGraph-style services."""

from .backend import (
    BackendConsumer,
    BackendProducer,
    Capabilities,
    Message,
    PubSubBackend,
)
from .consumer import Consumer, Handler
from .errors import (
    AuthenticationError,
    BadTopicError,
    BrokerConnectionError,
    ClosedError,
    ConfigurationError,
    ConnectionLostError,
    DeliveryError,
    MessageDecodeError,
    MessageTooLargeError,
    PubSubError,
    PubSubTimeoutError,
    QueueNotFoundError,
    ServiceError,
    UnsupportedError,
)
from .factory import add_pubsub_args, available_backends, get_pubsub, register_backend
from .metrics import Metrics
from .producer import Producer
from .publisher import Publisher
from .request_response import RequestResponse, Responder
from .retry import Backoff
from .subscriber import Subscriber

__all__ = [
    "AuthenticationError",
    "BackendConsumer",
    "BackendProducer",
    "Backoff",
    "BadTopicError",
    "BrokerConnectionError",
    "Capabilities",
    "ClosedError",
    "ConfigurationError",
    "ConnectionLostError",
    "Consumer",
    "DeliveryError",
    "Handler",
    "Message",
    "MessageDecodeError",
    "MessageTooLargeError",
    "Metrics",
    "Producer",
    "Publisher",
    "PubSubBackend",
    "PubSubError",
    "PubSubTimeoutError",
    "QueueNotFoundError",
    "RequestResponse",
    "Responder",
    "ServiceError",
    "Subscriber",
    "UnsupportedError",
    "add_pubsub_args",
    "available_backends",
    "get_pubsub",
    "register_backend",
]
