"""One trial: one contender, one workload, in a fresh process.

    python -m benchmarks.trial '<json spec>'

The suite starts this once per trial so that no contender inherits another's
warm caches, threads or garbage.  The spec names the broker and its
``get_pubsub`` keys, the contender and the workload with its sizes; the last
line printed is the result as JSON.  Topics are fresh per trial, and the
queues a workload needs are made (and afterwards deleted) through the SDK's
backend, so every contender meets the same native topology.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import sys
import time
from typing import Any

from benchmarks.contenders import load
from benchmarks.workloads import fresh, warmup
from trustgraph_pubsub import PubSubBackend, get_pubsub


async def prepare(backend: PubSubBackend, broker: str, topic: str, sub: str, consumers: int) -> None:
    """The subscription, made before anything is published to it.

    On MQTT a shared subscription's backlog waits in its members' sessions:
    one session per consumer slot is made, so a backlog is spread over
    ``consumers`` sessions as the broker spreads live traffic.
    """
    await backend.create_queue(topic, sub)
    if broker == "mqtt" and consumers > 1:
        made = await asyncio.gather(*(backend.create_consumer(topic, sub, None)
                                      for _ in range(consumers)))
        await asyncio.gather(*(c.close() for c in made))


async def cleanup(backend: PubSubBackend, *topics: str) -> None:
    for t in topics:
        with contextlib.suppress(Exception):
            await backend.delete_queue(t, None)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    broker, config = spec["broker"], spec["config"]
    backend = get_pubsub(**config)
    contender = load(spec["contender"], broker, config)
    out: dict[str, Any] = {}
    try:
        workload = spec["workload"]
        if workload == "throughput":
            n = spec["n"]
            for consumers in spec["consumers"]:
                t, sub = fresh(f"t{consumers}"), "bench"
                await prepare(backend, broker, t, sub, consumers)
                gc.collect()
                cpu = time.process_time()
                produce = await contender.produce(t, n)
                produce_cpu = time.process_time() - cpu
                gc.collect()
                cpu = time.process_time()
                seconds, unique, dups = await contender.consume(t, sub, n, consumers)
                consume_cpu = time.process_time() - cpu
                out[f"c{consumers}"] = {
                    "produce_per_s": (n - warmup(n)) / produce,
                    "consume_per_s": unique / seconds,
                    # CPU of the whole process (every thread: the client's own
                    # too) per message, set-up included: unlike a rate, not
                    # moved by what else the machine runs meanwhile.
                    "produce_cpu_us": produce_cpu / n * 1e6,
                    "consume_cpu_us": consume_cpu / n * 1e6,
                    "unique": unique,
                    "duplicates": dups,
                }
                await cleanup(backend, t)
        elif workload == "rr":
            burst = spec["concurrent"]
            for label, n, conc in (("sequential", spec["n"], 1),
                                   ("concurrent", burst * spec.get("bursts", 1), burst)):
                req, resp = fresh("req"), fresh("resp")
                gc.collect()
                out[label] = await contender.rr(req, resp, n, conc)
                await cleanup(backend, req, resp)
        elif workload == "paced":
            t, sub = fresh("paced"), "bench"
            await prepare(backend, broker, t, sub, 1)
            gc.collect()
            out["latencies"] = await contender.paced(t, sub, spec["rate"], spec["seconds"])
            out["rate"] = spec["rate"]
            await cleanup(backend, t)
        else:
            raise ValueError(f"unknown workload {workload!r}")
    finally:
        await contender.close()
        await backend.close()
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(sys.argv[1])
    try:
        result = asyncio.run(run(spec))
    except NotImplementedError as exc:
        result = {"skipped": str(exc) or "not supported"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
