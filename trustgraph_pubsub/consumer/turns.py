"""What a consumer's workers take turns as.

``_Worker`` is one worker task and whether it is in a handler.  How the turn
moves is in ``loop.py`` (``Consumer._work``, ``_nudge``, ``_pass_turn``) and
the package docstring.

A worker once ran a handler's first step itself (``coro.send(None)``) and
wrapped the rest only if it suspended; the ``StopIteration`` of every handler
that finished at once cost 0.2 us a message, more than the nudge that replaced
it (one ``call_soon`` per loop pass, not per message).
"""

from __future__ import annotations

import asyncio


class _Worker:
    """One of a consumer's worker tasks; ``busy`` while it handles a message."""

    __slots__ = ("busy", "task")

    def __init__(self) -> None:
        self.busy = False
        self.task: asyncio.Task[None] | None = None
