"""The project's one retry/backoff helper.

Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS
architecture blog): the n-th delay is uniform in ``[0, min(cap, base*2**n)]``,
so a fleet of clients that lost the same broker does not reconnect in step.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Backoff:
    """Delays for successive attempts; ``reset()`` after a success."""

    def __init__(self, base: float = 0.1, cap: float = 10.0, jitter: bool = True) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"Backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        if ceiling < self.cap:
            # Stop counting once the cap is reached: 2**attempt would otherwise
            # overflow a float after about a thousand failures (a long outage).
            self.attempt += 1
        return random.uniform(0, ceiling) if self.jitter else ceiling

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.attempt = 0


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    attempts: int | None = None,
    deadline: float | None = None,
    backoff: Backoff | None = None,
    what: str = "operation",
) -> T:
    """Call ``fn`` until it succeeds, retrying ``retry_on`` errors with backoff.

    Gives up after ``attempts`` tries or ``deadline`` seconds (whichever is
    set and first), re-raising the last error.  Other exceptions propagate
    at once.
    """
    backoff = backoff or Backoff()
    loop = asyncio.get_running_loop()
    stop_at = None if deadline is None else loop.time() + deadline
    tries = 0
    while True:
        tries += 1
        try:
            return await fn()
        except retry_on as exc:
            delay = backoff.next_delay()
            out_of_tries = attempts is not None and tries >= attempts
            out_of_time = stop_at is not None and loop.time() + delay > stop_at
            if out_of_tries or out_of_time:
                raise
            log.warning("%s failed (%s: %s); retry %d in %.2fs", what, type(exc).__name__, exc, tries, delay)
            await asyncio.sleep(delay)
