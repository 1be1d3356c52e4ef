"""The two pieces a consumer's workers take turns with.

``_Rest`` awaits what is left of a handler's coroutine once its first step
has suspended (that is when the turn to receive passes on); ``_Worker`` is one
worker task and whether it is in a handler.  How the turn moves is in ``loop.py``
(``Consumer._work``, ``_suspended``, ``_pass_turn``) and the package docstring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any


class _Rest:
    """Await the rest of a handler's coroutine, which has run to its first suspension.

    The worker runs a handler's first step itself (``coro.send(None)``); most
    handlers finish there, and then there is nothing to wrap, no object and
    no generator per message (measured: 0.3 us a message against 1.0 us for
    a wrapper that also ran the first step).  When the first step suspends,
    the turn passes on and the worker awaits this: ``await coro`` from the
    point it suspended at, with ``signal`` (what the coroutine yielded) handed
    to the task first.  The same values pass between the coroutine and the
    task in both directions as under a plain ``await``.
    """

    __slots__ = ("coro", "signal")

    def __init__(self, coro: Coroutine[Any, Any, Any], signal: Any) -> None:
        self.coro = coro
        self.signal = signal

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, signal = self.coro, self.signal
        self.signal = None
        while True:
            thrown: BaseException | None = None
            value: Any = None
            try:
                value = yield signal
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                thrown = exc
            # Outside the ``except`` block, so the handler sees the thrown error
            # with the same context as under a plain ``await``.
            try:
                signal = coro.send(value) if thrown is None else coro.throw(thrown)
            except StopIteration as done:
                return done.value
            finally:
                thrown = None


class _Worker:
    """One of a consumer's worker tasks; ``busy`` while it handles a message."""

    __slots__ = ("busy", "task")

    def __init__(self) -> None:
        self.busy = False
        self.task: asyncio.Task[None] | None = None
