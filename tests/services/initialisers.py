"""Third-party initialisers for the bootstrapper tests, loaded by dotted path."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bootstrap.initialiser import InitContext, Initialiser, InitialiserError

#: how often each named instance ran, across bootstrapper instances
RUNS: Counter[str] = Counter()


class Counting(Initialiser):
    """Counts its runs under ``label``; writes one config entry so the run is visible."""

    def __init__(self, label: str = "counting", **params: Any) -> None:
        super().__init__(**params)
        self.label = label

    async def run(self, ctx: InitContext, old_flag: str | None, new_flag: str) -> None:
        RUNS[self.label] += 1
        await ctx.config.put("counted", "runs", self.label, str(RUNS[self.label]))


class Failing(Initialiser):
    """Always fails."""

    async def run(self, ctx: InitContext, old_flag: str | None, new_flag: str) -> None:
        RUNS["failing"] += 1
        raise InitialiserError("this one always fails")


class Picky(Initialiser):
    """Refuses any params but ``ok``."""

    def __init__(self, ok: bool = True) -> None:
        if ok is not True:
            raise ValueError("ok must be true")
