"""Generic topic names: ``qos/tenant/namespace/queue``.

One parser for the whole project.  A generic name says how a queue is used
(its qos) and which queue it is (``tenant/namespace/queue``); each backend maps
it to its native form in ``trustgraph_pubsub.naming`` and nowhere else.

Every part is validated so that the same name is legal on all four brokers:
``[A-Za-z0-9_.-]+`` keeps out MQTT wildcards (``+`` ``#``), separators of
the other brokers (``/`` ``:``) and whitespace.  Tenants and namespaces also
keep out ``.``, and no part is only dots: RabbitMQ and Kafka names join the
parts with dots and Pulsar's admin API puts them in a URL path, so either
would let a queue name reach outside its tenant and namespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import TopicError

QOS_LEVELS: Final = ("q0", "q1", "q2")
#: queue names; tenants and namespaces take the same without '.' (see ``_check_part``).
_PART: Final = re.compile(r"[A-Za-z0-9_.-]+")
_PART_NAMES: Final = ("qos", "tenant", "namespace", "queue")


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed generic topic name."""

    qos: str
    tenant: str
    namespace: str
    queue: str

    def __str__(self) -> str:
        return f"{self.qos}/{self.tenant}/{self.namespace}/{self.queue}"

    @property
    def identity(self) -> str:
        """``tenant/namespace/queue``: which queue this is, whatever its qos."""
        return f"{self.tenant}/{self.namespace}/{self.queue}"

    def with_queue(self, queue: str) -> Topic:
        """The same tenant, namespace and qos with another queue name."""
        _check_part("queue", queue, str(self))
        return Topic(self.qos, self.tenant, self.namespace, queue)


def _check_part(part: str, value: object, name: str) -> None:
    if not isinstance(value, str):
        raise TopicError(f"topic {name!r}: {part} must be a string, not {type(value).__name__}")
    if value == "":
        raise TopicError(f"topic {name!r}: {part} is empty")
    if part == "qos":
        if value not in QOS_LEVELS:
            raise TopicError(
                f"topic {name!r}: unknown qos {value!r} (expected one of {', '.join(QOS_LEVELS)})"
            )
        return
    if "+" in value or "#" in value:
        raise TopicError(
            f"topic {name!r}: {part} {value!r} contains an MQTT wildcard ('+' or '#')"
        )
    if not _PART.fullmatch(value):
        bad = sorted({c for c in value if not _PART.fullmatch(c)})
        raise TopicError(
            f"topic {name!r}: {part} {value!r} has characters outside [A-Za-z0-9_.-]: {''.join(bad)!r}"
        )
    if part in ("tenant", "namespace") and "." in value:
        # RabbitMQ and Kafka join the parts with dots: "a.b" + "c" and "a" + "b.c"
        # would name one native queue, and a name could reach into another namespace.
        raise TopicError(
            f"topic {name!r}: {part} {value!r} contains '.'; tenants and namespaces use "
            "[A-Za-z0-9_-] (brokers join them with dots, so a dot would let one namespace's "
            "queue be another's)"
        )
    if not value.strip("."):
        raise TopicError(f"topic {name!r}: {part} {value!r} is only dots (a path step, not a name)")


def topic(queue: str, qos: str = "q1", tenant: str = "tg", namespace: str = "flow") -> str:
    """Build a generic topic name, validating every part.

    >>> topic("config-request")
    'q1/tg/flow/config-request'
    """
    name = f"{qos}/{tenant}/{namespace}/{queue}"
    for part, value in zip(_PART_NAMES, (qos, tenant, namespace, queue), strict=True):
        _check_part(part, value, name)
    return name


def parse_topic(name: str | Topic) -> Topic:
    """Parse and validate a generic topic name.

    Raises ``TopicError`` naming the part at fault.  A ``Topic`` passes through.
    """
    if isinstance(name, Topic):
        return name
    if not isinstance(name, str):
        raise TopicError(f"topic must be a string, not {type(name).__name__}")
    if "://" in name:
        raise TopicError(
            f"topic {name!r}: a native broker URI is not a generic name "
            "(expected qos/tenant/namespace/queue; only the Pulsar backend accepts persistent:// names)"
        )
    parts = name.split("/")
    if len(parts) != 4:
        raise TopicError(
            f"topic {name!r}: expected 4 parts qos/tenant/namespace/queue, got {len(parts)}"
        )
    for part, value in zip(_PART_NAMES, parts, strict=True):
        _check_part(part, value, name)
    return Topic(*parts)
