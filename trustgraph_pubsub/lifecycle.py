"""``Lifecycle``: ``async with`` for every class with ``start()`` and ``stop()``.

The SDK's long-lived objects (consumers, subscribers, request/response
callers and responders, config receivers, service clients, processors) have
an explicit lifecycle, as aiokafka's clients do: ``start()`` subscribes or
connects, ``stop()`` drains and releases, both idempotent.  ``async with``
is the same thing spelled for a block: start on entry, stop on exit, even
when the block raises.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Lifecycle"]


class Lifecycle:
    """Mixin: ``async with obj`` calls ``await obj.start()`` and ``await obj.stop()``."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
