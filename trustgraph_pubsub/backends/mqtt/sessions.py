"""The durable-session slots this process's MQTT consumers hold.

Only MQTT has this: a subscription's backlog lives in client sessions named by
client id, so each consumer needs a stable id of its own (its slot) that no
other consumer of this process uses; the other brokers keep a subscription's
backlog in a queue or group the broker owns.
"""

from __future__ import annotations

import threading
import time

from .config import TAKEOVER_LIMIT, TAKEOVER_WINDOW

_SlotKey = tuple[str, int, str, str]


class _SlotRegistry:
    """Which durable-session slots this process's consumers hold, per subscription.

    Process-wide (two backends in one process must not take over each
    other's sessions); a lock because several event loops may share it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[_SlotKey, set[int]] = {}
        self._highest: dict[_SlotKey, int] = {}
        self._takeovers: dict[tuple[_SlotKey, int], list[float]] = {}

    def acquire(self, key: _SlotKey) -> int:
        now = time.monotonic()
        with self._lock:
            held = self._held.setdefault(key, set())
            slot = 0
            while slot in held or self._avoided(key, slot, now):
                slot += 1
            held.add(slot)
            self._highest[key] = max(slot, self._highest.get(key, 0))
            return slot

    def _avoided(self, key: _SlotKey, slot: int, now: float) -> bool:
        times = self._takeovers.get((key, slot))
        if not times:
            return False
        times[:] = [t for t in times if now - t < TAKEOVER_WINDOW]
        return len(times) >= TAKEOVER_LIMIT

    def release(self, key: _SlotKey, slot: int) -> None:
        with self._lock:
            self._held.get(key, set()).discard(slot)

    def lost(self, key: _SlotKey, slot: int, weight: int = 1) -> None:
        """Count a lost connection of ``slot`` (``weight`` > 1 for a certain takeover)."""
        with self._lock:
            self._takeovers.setdefault((key, slot), []).extend([time.monotonic()] * weight)

    def held(self, key: _SlotKey) -> set[int]:
        with self._lock:
            return set(self._held.get(key, ()))

    def highest(self, key: _SlotKey) -> int:
        with self._lock:
            return self._highest.get(key, 0)

    def subscriptions(self, host: str, port: int, identity: str) -> list[str]:
        with self._lock:
            return sorted({k[3] for k in self._highest if k[:3] == (host, port, identity)})


_SLOTS = _SlotRegistry()
