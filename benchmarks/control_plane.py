"""The control plane under the suite: start and stop flows of a 20-processor blueprint.

    python -m benchmarks.control_plane '{"config": {...}, "flows": 10}'

In one process on the given broker: a config service (SQLite in a temporary
directory), a flow service and 20 ``FlowProcessor``s (``s00`` .. ``s19``, one
consumer each), every one on a backend of its own.  Then ``flows`` flows are
started one after the other, each timed until all 20 processors run it, and
stopped the same way.  Config pushes are counted on a subscription of the
benchmark's own; fetches per processor are the config service's count of
``getvalues`` of that processor's type.  Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bootstrap.config_service import ConfigService, SqliteStore
from bootstrap.flow_service import FlowService
from trustgraph_pubsub import Consumer, Message, PubSubError, get_pubsub
from trustgraph_pubsub.flow_client import FlowClient
from trustgraph_pubsub.flow_processor import ConsumerSpec, Flow, FlowProcessor
from trustgraph_schema import ConfigPush, config_push_queue

STAGES = 20


class Stage(FlowProcessor):
    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.register(ConsumerSpec("input", None, self.on_input))

    async def on_input(self, flow: Flow, msg: Message) -> None:
        pass


def blueprint(tag: str) -> dict[str, Any]:
    return {"description": "twenty stages", "flow": {
        f"s{i:02}:{{id}}": {"topics": {
            "input": f"q1/tg/flow/{tag}-s{i:02}.{{workspace}}.{{id}}",
            "output": f"q1/tg/flow/{tag}-s{i + 1:02}.{{workspace}}.{{id}}"}}
        for i in range(STAGES)}}


async def wait_for(check: Any, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the processors did not follow the flow service in time")
        await asyncio.sleep(0.01)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    config = spec["config"]
    flows = int(spec.get("flows", 10))
    tag = uuid.uuid4().hex[:6]
    backends = []

    def backend() -> Any:
        b = get_pubsub(**config)
        backends.append(b)
        return b

    store = SqliteStore(Path(tempfile.mkdtemp(prefix="tg-cp-bench-")) / "config.db")
    svc = ConfigService(backend=backend(), store=store, concurrency=8, subscription=f"config-{tag}")
    fsvc = FlowService(backend=backend(), release_wait=0.5, subscription=f"flow-{tag}")
    await asyncio.gather(svc.start(), fsvc.start())
    shared = backend()
    stages = [Stage(backend=shared, id=f"s{i:02}") for i in range(STAGES)]
    await asyncio.gather(*(s.start() for s in stages))
    await asyncio.gather(*(s.receiver.wait_ready(120) for s in stages if s.receiver is not None))
    pushes: list[ConfigPush] = []

    async def on_push(msg: Message) -> None:
        pushes.append(msg.value())

    async def measure(client: FlowClient) -> None:
        await client.wait_until_up(60)
        await client.put_blueprint("bench", "twenty", blueprint(tag))
        await asyncio.sleep(0.5)
        start_times, stop_times, start_pushes, stop_pushes, fetches = [], [], [], [], []
        for i in range(flows):
            fid = f"f{i}"
            before_p, before_r = len(pushes), svc.requests.copy()
            t0 = time.perf_counter()
            running.add(fid)
            await client.start_flow("bench", fid, "twenty")
            await wait_for(lambda fid=fid: all(("bench", fid) in s.flows for s in stages))
            start_times.append(time.perf_counter() - t0)
            await asyncio.sleep(0.3)  # pushes in flight land
            start_pushes.append(len(pushes) - before_p)
            got = svc.requests - before_r
            fetches.append(sum(n for (op, t), n in got.items()
                               if op == "getvalues" and t.startswith("processor:")) / STAGES)
        for i in range(flows):
            fid = f"f{i}"
            before_p = len(pushes)
            t0 = time.perf_counter()
            await client.stop_flow("bench", fid)
            running.discard(fid)
            await wait_for(lambda fid=fid: not any(("bench", fid) in s.flows for s in stages))
            stop_times.append(time.perf_counter() - t0)
            await asyncio.sleep(0.3)
            stop_pushes.append(len(pushes) - before_p)
        out.update({
            "start_s_per_flow": sum(start_times) / flows,
            "stop_s_per_flow": sum(stop_times) / flows,
            "pushes_per_start": sum(start_pushes) / flows,
            "pushes_per_stop": sum(stop_pushes) / flows,
            "fetches_per_processor_per_start": sum(fetches) / flows,
            "start_seconds": start_times,
            "stop_seconds": stop_times,
            "release_wait_s": fsvc.release_wait,
        })

    out: dict[str, Any] = {"flows": flows, "processors": STAGES}
    running: set[str] = set()
    try:
        async with Consumer(backend(), config_push_queue, f"cp-bench-{tag}", ConfigPush, on_push,
                            ephemeral=True), FlowClient(backend(), timeout=300) as client:
            try:
                await measure(client)
            finally:
                # A run that failed half-way stops the flows it started: on a broker
                # that outlives the run, their queues would stay behind.
                for fid in sorted(running):
                    try:
                        await client.stop_flow("bench", fid)
                    except Exception as exc:
                        logging.warning("could not stop flow bench/%s: %s", fid, exc)
    finally:
        for s in stages:
            await s.stop()
        await fsvc.stop()
        await svc.stop()
        # The services' subscriptions are this run's own: on a broker that outlives
        # the run (RabbitMQ), a durable queue left bound to the request topic would
        # collect a copy of every config or flow request anyone sends, for good.
        for topic, sub in ((svc.request_topic, svc.subscription),
                           (fsvc.request_topic, fsvc.subscription)):
            try:
                await shared.delete_queue(topic, sub)
            except PubSubError as exc:
                logging.warning("could not delete subscription %r of %s: %s", sub, topic, exc)
        for b in backends:
            await b.close()
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))), flush=True)
