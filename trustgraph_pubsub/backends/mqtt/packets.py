"""MQTT 5 user properties, packed into their wire form once per message.

Only MQTT has this: paho's ``Properties`` object rebuilds lookup tables and
packs on every use, which is most of a small publish's cost, so the backend
writes the property bytes itself (the other brokers' clients take headers as
plain mappings).
"""

from __future__ import annotations

from collections.abc import Mapping

from paho.mqtt.properties import Properties

from ...errors import ConfigurationError
from .config import REDELIVERY_PROPERTY


class _PackedProperties(Properties):
    """User properties packed once, in the wire form ``Properties.pack`` gives.

    paho only ever calls ``pack()`` on publish properties; the base class
    builds two lookup tables per instance and packs on every call, which is
    most of a small publish's cost.  ``__init__`` deliberately skips it.
    """

    def __init__(self, packed: bytes) -> None:
        object.__setattr__(self, "_packed", packed)

    def pack(self) -> bytes:
        packed: bytes = object.__getattribute__(self, "_packed")
        return packed

    def __str__(self) -> str:
        return f"[{len(self.pack())} bytes of user properties]"

    __repr__ = __str__


def _properties(packet_type: int) -> Properties:
    """An empty paho ``Properties`` (its constructor carries no type hints)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _put_string(out: bytearray, s: str, what: str, topic: str) -> None:
    if "\x00" in s:
        raise ConfigurationError(
            f"property {what} on {topic}: MQTT strings cannot contain NUL (U+0000); "
            "remove it or encode the value (base64, JSON)"
        )
    try:
        b = s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"property {what} on {topic} is not valid UTF-8 text ({exc.reason}); "
            "MQTT user properties are UTF-8 strings"
        ) from exc
    if len(b) > 0xFFFF:
        raise ConfigurationError(
            f"property {what} on {topic} is {len(b)} bytes; an MQTT string holds at most 65,535"
        )
    out += len(b).to_bytes(2, "big")
    out += b


def _user_properties(
    props: Mapping[str, str], topic: str, redeliveries: int | None = None
) -> Properties | None:
    """MQTT 5 user properties for a publish, or None when there are none."""
    if not props and redeliveries is None:
        return None
    body = bytearray()
    for k, v in props.items():
        if k == REDELIVERY_PROPERTY:
            raise ConfigurationError(
                f"property {k!r} on {topic} is reserved by the MQTT backend (redelivery count); "
                "use another name"
            )
        body.append(0x26)
        _put_string(body, k, repr(k), topic)
        _put_string(body, v, f"{k!r} value", topic)
    if redeliveries is not None:
        body.append(0x26)
        _put_string(body, REDELIVERY_PROPERTY, REDELIVERY_PROPERTY, topic)
        _put_string(body, str(redeliveries), REDELIVERY_PROPERTY, topic)
    return _PackedProperties(_varint(len(body)) + bytes(body))
