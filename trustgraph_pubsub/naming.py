"""The one place where each backend's native names are made.

Generic names (``q1/tg/flow/queue``) are parsed here with the project's one
topic parser and turned into each broker's native form.  Backends call these
functions; they never format native names themselves.

| qos | Pulsar                         | RabbitMQ exchange / queue            | Kafka topic / group | MQTT topic              |
|-----|--------------------------------|--------------------------------------|---------------------|-------------------------|
| q0  | non-persistent://t/ns/queue    | t.ns.queue / t.ns.queue:subscription | t.ns.queue / sub    | t/ns/queue              |
| q1+ | persistent://t/ns/queue        | same names, durable                  | same                | same, $share/sub/... to share |

The qos is not part of a queue's identity on RabbitMQ, Kafka and MQTT, so
``q0/t/ns/x`` and ``q1/t/ns/x`` name the same native queue there.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from trustgraph_schema.errors import TopicError
from trustgraph_schema.topic import Topic, parse_topic

from .errors import BadTopicError

_SUBSCRIPTION = re.compile(r"[A-Za-z0-9_.-]+")
_PULSAR_URI = re.compile(r"(persistent|non-persistent)://([^/]+)/([^/]+)/([^/]+)")

DLQ_SUFFIX = ".dlq"


def parse(name: str | Topic) -> Topic:
    """Parse a generic name, raising the SDK's ``BadTopicError``."""
    try:
        return parse_topic(name)
    except TopicError as exc:
        raise BadTopicError(str(exc)) from exc


def check_subscription(subscription: str, topic: str | Topic) -> str:
    """Validate a subscription name with the same alphabet as topic parts."""
    if not isinstance(subscription, str) or not _SUBSCRIPTION.fullmatch(subscription):
        raise BadTopicError(
            f"subscription {subscription!r} on topic {str(topic)!r}: must be non-empty "
            "and use only [A-Za-z0-9_.-]"
        )
    return subscription


def dead_letter_topic(name: str | Topic) -> str:
    """``<queue>.dlq`` in the same qos, tenant and namespace."""
    t = parse(name)
    return str(t.with_queue(t.queue + DLQ_SUFFIX))


# -- Pulsar -----------------------------------------------------------------


def pulsar_topic(name: str | Topic) -> str:
    """q0 -> ``non-persistent://t/ns/q``; q1, q2 -> ``persistent://t/ns/q``.

    A full Pulsar URI (``persistent://...``) passes through unchanged: the
    Pulsar backend is the only one that accepts native names.
    """
    if isinstance(name, str) and "://" in name:
        if not _PULSAR_URI.fullmatch(name):
            raise BadTopicError(
                f"topic {name!r}: not a Pulsar URI (expected persistent://tenant/namespace/topic)"
            )
        return name
    t = parse(name)
    scheme = "non-persistent" if t.qos == "q0" else "persistent"
    return f"{scheme}://{t.tenant}/{t.namespace}/{t.queue}"


def pulsar_admin_path(name: str | Topic, subscription: str | None = None) -> str:
    """The topic's (or subscription's) path under the admin REST API's ``/admin/v2/``.

    ``persistent/tenant/namespace/queue`` and, with a subscription,
    ``.../subscription/<subscription>``; parts of a passed-through Pulsar URI
    are percent-encoded.
    """
    scheme, _, rest = pulsar_topic(name).partition("://")
    path = "/".join([scheme, *(quote(part, safe="") for part in rest.split("/"))])
    if subscription is not None:
        check_subscription(subscription, name)
        path += f"/subscription/{subscription}"
    return path


# -- RabbitMQ ---------------------------------------------------------------


def rabbitmq_exchange(name: str | Topic) -> str:
    t = parse(name)
    return f"{t.tenant}.{t.namespace}.{t.queue}"


#: joins a topic's exchange name and a subscription in a queue name; outside both
#: alphabets, so topic "q" + subscription "a.b" and topic "q.a" + "b" stay apart.
RABBITMQ_QUEUE_SEPARATOR = ":"


def rabbitmq_queue(name: str | Topic, subscription: str) -> str:
    """``tenant.namespace.queue:subscription``: one subscription's queue."""
    check_subscription(subscription, name)
    return f"{rabbitmq_exchange(name)}{RABBITMQ_QUEUE_SEPARATOR}{subscription}"


#: AMQP 0-9-1 exchange and queue names are short strings: at most 255 bytes.
RABBITMQ_NAME_MAX = 255
_RABBITMQ_REGISTRY_SUFFIX = "::subscriptions"


def rabbitmq_registry_queue(name: str | Topic) -> str:
    """``tenant.namespace.queue::subscriptions``: the queue that remembers a topic's
    subscription queues, so that deleting the topic can find them without the
    management API.  A subscription cannot start with ``:``, so this name can
    never be a subscription's queue.
    """
    return f"{rabbitmq_exchange(name)}{_RABBITMQ_REGISTRY_SUFFIX}"


def check_rabbitmq_name(native: str, name: str | Topic) -> str:
    """Refuse a native RabbitMQ name longer than AMQP allows (255 bytes)."""
    size = len(native.encode("utf-8"))
    if size > RABBITMQ_NAME_MAX:
        raise BadTopicError(
            f"topic {str(name)!r}: RabbitMQ name {native[:40]!r}... is {size} bytes, more than "
            f"the {RABBITMQ_NAME_MAX} AMQP allows; use shorter tenant, namespace, queue or "
            "subscription names"
        )
    return native


# -- Kafka ------------------------------------------------------------------

#: joins topic and subscription in a group id; outside both alphabets.
KAFKA_GROUP_SEPARATOR = ":"


def kafka_topic(name: str | Topic) -> str:
    t = parse(name)
    return f"{t.tenant}.{t.namespace}.{t.queue}"


def kafka_group(name: str | Topic, subscription: str) -> str:
    """``tenant.namespace.queue:subscription``: the consumer group of a subscription.

    Scoped by topic so that the same subscription name on two topics gives two
    groups (rebalances are per group, and unrelated topics must not rebalance
    together).  ``:`` cannot occur in a Kafka topic name or a subscription, so
    a group name splits back into its topic and subscription one way only.
    """
    check_subscription(subscription, name)
    return f"{kafka_topic(name)}{KAFKA_GROUP_SEPARATOR}{subscription}"


# -- MQTT -------------------------------------------------------------------


def mqtt_topic(name: str | Topic) -> str:
    t = parse(name)
    return f"{t.tenant}/{t.namespace}/{t.queue}"


def mqtt_shared_filter(name: str | Topic, subscription: str) -> str:
    """``$share/<subscription>/<topic>``: competing consumers of one subscription."""
    check_subscription(subscription, name)
    return f"$share/{subscription}/{mqtt_topic(name)}"


#: The level that marks a subscription's redelivery topic.  Generic names map to
#: three MQTT levels, so a five-level topic can never be any generic topic's.
MQTT_REDELIVERY_LEVEL = "_redeliver"


def mqtt_redelivery_topic(name: str | Topic, subscription: str) -> str:
    """``tenant/namespace/queue/_redeliver/<subscription>``: one subscription's own queue.

    MQTT cannot put a message back into one subscription only, so the MQTT
    backend publishes messages it hands back (a consumer closing with unacked
    messages) here, and every consumer of the subscription also subscribes to it.
    """
    check_subscription(subscription, name)
    return f"{mqtt_topic(name)}/{MQTT_REDELIVERY_LEVEL}/{subscription}"


def mqtt_redelivery_filter(name: str | Topic, subscription: str) -> str:
    """``$share/<subscription>/<redelivery topic>``: shared like the subscription itself."""
    return f"$share/{subscription}/{mqtt_redelivery_topic(name, subscription)}"


def mqtt_client_id(name: str | Topic, subscription: str, slot: int | str) -> str:
    """``<tenant>/<namespace>/<queue>:<subscription>:<slot>``: a consumer's session id.

    A durable MQTT subscription lives in client sessions, so a consumer's client
    id is its place in the subscription: ``slot`` is a small number reused by the
    next consumer (its persistent session, and the messages waiting in it, are
    taken over) or a unique token for a throwaway session.  ``:`` cannot occur in
    a topic part or subscription, so distinct topics never share an id.
    """
    check_subscription(subscription, name)
    return f"{mqtt_topic(name)}:{subscription}:{slot}"


def mqtt_producer_client_id(token: str) -> str:
    """``tg-producer:<token>``: the client id of a backend's publishing connection."""
    return f"tg-producer:{token}"
