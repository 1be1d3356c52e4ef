"""What the suite measures, shared by every contender (the SDK, raw clients, FastStream).

A contender is a class with four async methods, each on fresh topics the
trial gives it, with the same 1 KiB payload (``Payload``, JSON through the
project's codec, or FastStream's own JSON for FastStream):

* ``produce(topic, n) -> seconds``: send ``n`` messages; the first
  ``warmup(n)`` are sent and confirmed before the clock starts (the first
  sends of a fresh process pay for connections and caches), the clock stops
  when the broker confirmed every one (or the client's flush returned);
* ``consume(topic, sub, n, consumers) -> (seconds, unique, duplicates)``:
  drain ``n`` messages already waiting on subscription ``sub`` with
  ``consumers`` consumers sharing it; the clock runs from the first message
  to the moment every message was handled and acknowledged;
* ``rr(req, resp, n, concurrency) -> latencies``: ``n`` request/response
  round trips, ``concurrency`` at a time;
* ``paced(topic, sub, rate, seconds) -> latencies``: receive while a sender
  in another process (``benchmarks.pacer``, calling the same contender's
  ``send_paced``) sends at a fixed rate, and measure each message's delay
  from its *scheduled* send time to its handling (the OpenMessaging
  Benchmark's way: a sender that falls behind schedule shows up as latency,
  not as a lower rate).  Sender and receiver are separate processes, as
  OMB's are, so they do not share one interpreter lock; ``perf_counter`` is
  the system's monotonic clock on Linux, the same in both.

A contender that does not take part in a workload raises ``NotImplementedError``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from trustgraph_schema.topic import topic

__all__ = ["TEXT", "Contender", "Payload", "Seen", "fresh", "pace", "payload_bytes", "payloads", "warmup"]

TEXT = "x" * 1000  # with the JSON around it, about 1 KiB on the wire


@dataclass
class Payload:
    """The benchmark message: its number, its scheduled send time, 1 KiB of text."""

    n: int
    t: float = 0.0
    text: str = ""


def payloads(n: int) -> list[Payload]:
    """The ``n`` messages of a throughput run, as the application holds them.

    Every contender starts from these objects and encodes each one inside the
    clock (the SDK's ``Producer`` does it in ``send``; the raw clients and
    FastStream call the project's codec in their send loops), so that the
    publish figures compare like with like.
    """
    return [Payload(i, 0.0, TEXT) for i in range(n)]


def payload_bytes(n: int, t: float = 0.0) -> bytes:
    from trustgraph_schema import codec

    return codec.encode(Payload(n, t, TEXT))


def fresh(label: str) -> str:
    """A new generic topic in the ``bench`` namespace."""
    return topic(f"b{uuid.uuid4().hex[:10]}-{label}", qos="q1", tenant="tg", namespace="bench")


class Contender(Protocol):
    name: str

    async def produce(self, topic: str, n: int) -> float: ...

    async def consume(self, topic: str, sub: str, n: int, consumers: int) -> tuple[float, int, int]: ...

    async def rr(self, req: str, resp: str, n: int, concurrency: int) -> list[float]: ...

    async def paced(self, topic: str, sub: str, rate: float, seconds: float) -> list[float]: ...

    async def send_paced(self, topic: str, rate: float, seconds: float) -> None: ...

    async def close(self) -> None: ...


class Seen:
    """Counts handled messages by number: unique ones, duplicates, and when all arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen: set[int] = set()
        self.total = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()
        self.latencies: list[float] = []
        self._lock = threading.Lock()

    def _record(self, number: int, scheduled: float) -> bool:
        now = time.perf_counter()
        if not self.total:
            self.first = now
        self.total += 1
        if scheduled:
            self.latencies.append(now - scheduled)
        if number not in self.seen:
            self.seen.add(number)
            if len(self.seen) == self.n:
                self.last = now
                return True
        return False

    def add(self, number: int, scheduled: float = 0.0) -> None:
        """One handled message, on the event loop."""
        if self._record(number, scheduled):
            self.done.set()

    def add_threadsafe(self, loop: asyncio.AbstractEventLoop, number: int, scheduled: float = 0.0) -> None:
        """``add`` from a client's own thread (the timing is taken there)."""
        with self._lock:
            complete = self._record(number, scheduled)
        if complete:
            loop.call_soon_threadsafe(self.done.set)

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
        await asyncio.wait_for(self.done.wait(), timeout)

    def result(self) -> tuple[float, int, int]:
        unique = len(self.seen)
        return max(self.last - self.first, 1e-9), unique, self.total - unique


#: the pacer's tick: every message scheduled by then is sent, then it sleeps
TICK = 0.001


async def pace(rate: float, seconds: float, send: Any) -> int:
    """Call ``await send(i, scheduled)`` for ``rate * seconds`` messages on schedule.

    Message ``i`` is scheduled at ``start + i / rate``.  Each tick sends every
    message whose time has come, stamped with its scheduled time (not the
    time it actually left), so a sender that falls behind shows as latency.
    """
    n = max(1, int(rate * seconds))
    start = time.perf_counter() + 0.05
    i = 0
    while i < n:
        due = min(n, int((time.perf_counter() - start) * rate) + 1)
        while i < due:
            await send(i, start + i / rate)
            i += 1
        await asyncio.sleep(TICK)
    return n


def warmup(n: int) -> int:
    """How many of ``n`` messages a producer sends before its clock starts."""
    return min(1000, n // 10)


async def run_pacer(contender: Any, topic: str, rate: float, seconds: float) -> None:
    """Run ``contender.send_paced`` in a fresh process (``benchmarks.pacer``) and wait for it."""
    import json
    import sys

    spec = {"broker": contender.broker, "config": contender.config, "contender": contender.name,
            "topic": topic, "rate": rate, "seconds": seconds}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.pacer", json.dumps(spec),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the pacer failed ({proc.returncode}): {err.decode()[-1500:]}")
