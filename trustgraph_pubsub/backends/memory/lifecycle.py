"""Queue lifecycle of the memory backend: check the names, then ask the hub.

There is little to it: a "queue" is a hub subscription, and the work of
making, deleting and finding one is the broker's, so it is done by
``MemoryHub.create_queue``, ``delete_queue`` and ``queue_exists`` in
``hub.py``.  What the backend itself does, and ``MemoryBackend`` delegates
here, is parse the generic topic name and check the subscription name before
it asks.  ``ensure_queue`` is ``create_queue`` (a declare is idempotent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import naming

if TYPE_CHECKING:
    from .hub import MemoryHub


def create_queue(hub: MemoryHub, topic: str, subscription: str) -> None:
    """Make the subscription unless it exists."""
    parsed = naming.parse(topic)
    naming.check_subscription(subscription, topic)
    hub.create_queue(parsed, subscription)


def delete_queue(hub: MemoryHub, topic: str, subscription: str | None) -> None:
    """Drop the subscription, or with None the topic; absent ones are no error."""
    parsed = naming.parse(topic)
    if subscription is not None:
        naming.check_subscription(subscription, topic)
    hub.delete_queue(parsed, subscription)


def queue_exists(hub: MemoryHub, topic: str, subscription: str) -> bool:
    """Whether the hub has the subscription on the topic."""
    parsed = naming.parse(topic)
    naming.check_subscription(subscription, topic)
    return hub.queue_exists(parsed, subscription)
