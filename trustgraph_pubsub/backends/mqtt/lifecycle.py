"""MQTT has no queues: a subscription's slot-0 session stands in for one.

``MQTTBackend``'s ``create_queue``/``ensure_queue``, ``queue_exists`` and
``delete_queue`` delegate here; ``MQTTConsumer.unsubscribe`` ends the other
sessions of its subscription through ``_end_sessions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import naming
from .config import _QOS
from .connection import _Link
from .errors import subscribe_refused
from .sessions import _SLOTS

if TYPE_CHECKING:
    from . import MQTTBackend


async def _probe(backend: MQTTBackend, topic: str, subscription: str, slot: int, *, end: bool,
                 subscribe: bool = False) -> bool:
    """Connect as ``slot``'s session; whether it existed.  ``end`` ends it afterwards."""
    link = _Link(
        backend,
        naming.mqtt_client_id(topic, subscription, slot),
        session_expiry=backend.session_expiry,
        clean_start=False,
    )
    try:
        present = await link.open()
        if subscribe:
            t = naming.parse(topic)
            filters = [naming.mqtt_shared_filter(t, subscription)]
            if _QOS[t.qos]:
                filters.append(naming.mqtt_redelivery_filter(t, subscription))
            for f, reason in zip(
                filters, await link.subscribe([(f, 1) for f in filters]), strict=False
            ):
                if reason.is_failure:
                    raise subscribe_refused(backend, f, reason)
        await link.close(end_session=end or not (present or subscribe))
        return present
    finally:
        if not link.closing:
            await link.close()


async def create_queue(backend: MQTTBackend, topic: str, subscription: str) -> None:
    """``MQTTBackend.create_queue``: connect as slot 0 and subscribe, unless this process holds it."""
    naming.mqtt_shared_filter(topic, subscription)
    backend._check_open()
    if 0 in _SLOTS.held(backend._key(topic, subscription)):
        return
    await _probe(backend, topic, subscription, 0, end=False, subscribe=True)


async def queue_exists(backend: MQTTBackend, topic: str, subscription: str) -> bool:
    """``MQTTBackend.queue_exists``: a slot held here, or a slot-0 session the broker resumes."""
    naming.mqtt_shared_filter(topic, subscription)
    backend._check_open()
    if _SLOTS.held(backend._key(topic, subscription)):
        return True
    return await _probe(backend, topic, subscription, 0, end=False)


async def delete_queue(backend: MQTTBackend, topic: str, subscription: str | None = None) -> None:
    """``MQTTBackend.delete_queue``: ``_end_sessions`` of one subscription, or of each one used here."""
    backend._check_open()
    if subscription is None:
        t = naming.parse(topic)
        for sub in _SLOTS.subscriptions(backend.host, backend.port, t.identity):
            await _end_sessions(backend, topic, sub)
        return
    naming.mqtt_shared_filter(topic, subscription)
    await _end_sessions(backend, topic, subscription)


async def _end_sessions(backend: MQTTBackend, topic: str, subscription: str) -> None:
    """End every session of the subscription that no consumer of this process holds.

    Slots are taken lowest first, so sessions are looked for up to the
    highest slot this process used and then until one is missing.
    """
    key = backend._key(topic, subscription)
    limit = _SLOTS.highest(key)
    held = _SLOTS.held(key)
    slot = 0
    while True:
        if slot not in held:
            present = await _probe(backend, topic, subscription, slot, end=True)
            if slot > limit and not present:
                return
        elif slot > limit:
            return
        slot += 1
