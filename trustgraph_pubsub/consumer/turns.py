"""The two pieces a consumer's workers take turns with.

``_Watch`` awaits a handler's coroutine and says when it first suspends (that
is when the turn to receive passes on); ``_Worker`` is one worker task and
whether it is in a handler.  How the turn moves is in ``loop.py``
(``Consumer._work``, ``_suspended``, ``_pass_turn``) and the package docstring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any


class _Watch:
    """Await a handler's coroutine; call ``on_suspend`` the first time it suspends.

    This is ``await coro`` (the same values pass between the coroutine and the
    task in both directions) with one hook: the turn passes to another worker
    exactly when the handler first waits, so a handler that finishes without
    waiting costs neither a task switch nor a scheduled callback.
    """

    __slots__ = ("coro", "on_suspend")

    def __init__(self, coro: Coroutine[Any, Any, Any], on_suspend: Callable[[], None]) -> None:
        self.coro = coro
        self.on_suspend = on_suspend

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        try:
            signal = coro.send(None)
        except StopIteration as done:
            return done.value
        self.on_suspend()
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
