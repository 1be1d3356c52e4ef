"""The memory backend's settings: its constants, and the check of a consumer's options.

The hub's payload limit and retention, the consumer's default receive queue,
the consumer types and initial positions it accepts, and ``_Pacer``, the
knob ``_YIELD_EVERY`` at work (here because the producer and the consumer both
use it).  There is no endpoint, URL or credential, so nothing to show redacted;
rejected option values are quoted through ``trustgraph_pubsub.redact.shown``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ...errors import ConfigurationError
from ...redact import shown

DEFAULT_MAX_MESSAGE_SIZE = 5 * 1024 * 1024
DEFAULT_RETAIN = 100_000
_YIELD_EVERY = 64
#: a consumer's receive queue unless ``create_consumer(prefetch=...)`` says otherwise.
DEFAULT_PREFETCH = 100
_CONSUMER_TYPES = ("shared", "exclusive", "failover")
_POSITIONS = ("earliest", "latest")


def check_consumer_settings(
    topic: str, initial_position: str, consumer_type: str, opts: Mapping[str, Any]
) -> int:
    """Check ``create_consumer``'s position, type and ``prefetch``; the prefetch to use."""
    if initial_position not in _POSITIONS:
        raise ConfigurationError(
            f"initial_position {shown(initial_position)} for {topic}: expected 'earliest' or 'latest'"
        )
    if consumer_type not in _CONSUMER_TYPES:
        raise ConfigurationError(
            f"consumer_type {shown(consumer_type)} for {topic}: expected one of "
            f"{', '.join(_CONSUMER_TYPES)}"
        )
    prefetch = opts.get("prefetch") or DEFAULT_PREFETCH
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise ConfigurationError(f"prefetch for {topic} must be an int >= 1, got {shown(prefetch)}")
    return prefetch


class _Pacer:
    """Yield to the event loop every ``_YIELD_EVERY`` calls that did not wait."""

    __slots__ = ("_n",)

    def __init__(self) -> None:
        self._n = 0

    async def tick(self) -> None:
        self._n += 1
        if self._n >= _YIELD_EVERY:
            self._n = 0
            await asyncio.sleep(0)

    def skip(self) -> bool:
        """Count a call that does not yield, unless it is the one due to: then
        False, and the caller awaits ``tick`` instead."""
        if self._n + 1 >= _YIELD_EVERY:
            return False
        self._n += 1
        return True
