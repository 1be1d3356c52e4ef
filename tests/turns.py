"""``LoopTurns``: how often other tasks got the event loop while a block ran.

Counted, not timed: a task that only yields gets one turn each time the code
under test yields, so the count does not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
from typing import Any


class LoopTurns:
    """``async with LoopTurns() as turns: ...``; ``turns.count`` so far."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop:
            self.count += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        self.count = 0
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop = True
        assert self._task is not None
        await self._task
