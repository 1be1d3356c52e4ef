"""Kill services at random points of a flow start/stop storm; the state converges.

Per broker, ``config-svc``, ``flow-svc``, ``bootstrap`` (the demo's
initialisers) and ``chunker`` run as processes.  For ``TG_STORM_SECONDS``
(20 by default; ``make soak`` runs 120) three clients start and stop six flows
of the demo blueprint in the ``default`` workspace while a killer sends
SIGKILL to a random one of the four services every 1-3 s and starts it again
0-1 s later.  Then the killing stops and the test waits until the store is
quiet and the flow service has answered (requests a client gave up on wait in
its queue for a restarted flow-svc and are carried out late), and checks that
nothing is half-done:

- no start intent (``flow-starting``) and no stop (``flow-stopping``) is left;
- the bootstrapper converged: every flag is stored and its ``default`` flow runs;
- the chunker's processor entries are exactly the running flows;
- where the backend can tell, a flow's queue exists exactly while it runs;
- the chunker answers through every running flow.

A last round without kills stops every storm flow and starts a random subset:
the state is then exactly that subset, so the control plane is not only
consistent after the storm but still works.  On a broker that can keep a
killed chunker's share of a flow's requests for good (``LEFT_BEHIND``: tansu,
pulsar-lite), the chunker's answers are asked for only on fresh flows the last
round starts, not on the storm's.  The figures (operations sent,
answered, refused, timed out; kills per service) are printed.

The memory backend cannot cross processes, so it is not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bootstrap.dev import DEFAULT_INITIALISERS
from bootstrap.initialisers.queues import CONTROL_QUEUES
from tests.brokers import STUCK_GROUP_AFTER_CONCURRENT_LEAVE, Broker
from tests.brokers.pulsar import RESET_LEAVES_CONSUMERS
from tests.services.helpers import chunk_topics
from tests.services.test_processes import Service, _first_answer, broker_flags
from trustgraph_pubsub import (
    PubSubBackend,
    PubSubError,
    PubSubTimeoutError,
    QueueNotFoundError,
    RequestResponse,
    ServiceError,
)
from trustgraph_pubsub.config_client import ConfigClient
from trustgraph_pubsub.flow_client import FlowClient
from trustgraph_schema import TextChunkRequest, TextChunkResponse

STORM_SECONDS = float(os.environ.get("TG_STORM_SECONDS", "20"))
WAIT = 180.0
WS = "default"
IDS = [f"s{i}" for i in range(6)]
INIT_FLAGS = {"queues", "template", "workspace-default", "default-flow"}
#: broker quirks under which a killed chunker can keep a storm flow's requests
#: for good (tansu's wedged group, pulsar-lite's consumers of a reset connection)
LEFT_BEHIND = frozenset({STUCK_GROUP_AFTER_CONCURRENT_LEAVE, RESET_LEAVES_CONSUMERS})
SERVICES: dict[str, list[str]] = {
    "config-svc": ["--concurrency", "4"],  # --config-db added per test
    "flow-svc": ["--release-wait", "0.5", "--config-timeout", "5", "--sweep-interval", "2"],
    "bootstrap": ["-c", str(DEFAULT_INITIALISERS), "--gate-interval", "0.5",
                  "--converge-interval", "0.5", "--service-timeout", "2"],
    "chunker": [],
}


class StormBattery:
    broker_name: ClassVar[str]
    #: how long the store must stay unchanged to count as settled: longer than a
    #: killed service's requests can wait to be delivered again
    quiet: ClassVar[float] = 3.0

    @pytest.fixture
    async def client_backend(self, broker: Broker) -> AsyncIterator[PubSubBackend]:
        b = broker.make_backend()
        yield b
        await b.close()

    @pytest.fixture
    def everyone(self) -> Iterator[list[Service]]:
        """Every service process the test starts; all are killed at the end, pass or fail."""
        started: list[Service] = []
        yield started
        for s in started:
            s.kill()

    async def test_services_killed_in_a_flow_storm_converge(
        self, broker: Broker, client_backend: PubSubBackend, tmp_path: Path,
        everyone: list[Service],
    ) -> None:
        backend = client_backend
        for topic, sub in CONTROL_QUEUES:  # requests an earlier test left for the services
            with contextlib.suppress(Exception):
                await backend.delete_queue(topic, sub)
        flags = broker_flags(broker)
        args = {**SERVICES, "config-svc": [*SERVICES["config-svc"], "--config-db",
                                           str(tmp_path / "config.db")]}
        running: dict[str, Service] = {}
        starts: Counter[str] = Counter()

        def start(name: str) -> None:
            starts[name] += 1
            s = Service(name, [*flags, *args[name]], tmp_path / f"{name}-{starts[name]}.log")
            running[name] = s
            everyone.append(s)

        def logs() -> str:
            return "\n".join(f"--- {s.log.name}\n{s.tail()}" for s in everyone[-8:])

        for name in SERVICES:
            start(name)
        rng = random.Random(os.environ.get("TG_STORM_SEED"))
        kills: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        answered = [0]  # operations the flow service answered, whatever it said
        try:
            async with ConfigClient(backend, timeout=10.0) as config, \
                    FlowClient(backend, timeout=8.0) as flows:
                await config.wait_until_up(WAIT)  # the storm begins on a working plane
                await flows.wait_until_up(WAIT)
                stop_at = time.monotonic() + STORM_SECONDS

                async def killer() -> None:
                    while time.monotonic() < stop_at:
                        await asyncio.sleep(rng.uniform(1.0, 3.0))
                        name = rng.choice(sorted(SERVICES))
                        running[name].kill()
                        kills[name] += 1
                        await asyncio.sleep(rng.uniform(0.0, 1.0))
                        start(name)

                async def client(ids: list[str]) -> None:
                    while time.monotonic() < stop_at:
                        fid = rng.choice(ids)
                        op = rng.choice(("start", "stop"))
                        try:
                            if op == "start":
                                await flows.start_flow(WS, fid, "chunks")
                            else:
                                await flows.stop_flow(WS, fid)
                            outcomes[f"{op} ok"] += 1
                            answered[0] += 1
                        except ServiceError as exc:
                            outcomes[f"{op} {exc.type}"] += 1
                            answered[0] += 1
                        except PubSubError as exc:  # no answer: the service was killed
                            outcomes[f"{op} {type(exc).__name__}"] += 1
                            await asyncio.sleep(0.5)

                async with asyncio.TaskGroup() as storm:  # one failing stops the others
                    storm.create_task(killer())
                    for i in range(3):
                        storm.create_task(client(IDS[i::3]))

                state = await _quiet(config, flows, self.quiet)
                wedges = bool(LEFT_BEHIND & broker.quirks)
                # (on such a broker a storm flow's requests may go for good to a killed
                # chunker's group membership or consumer: its answers are asked for on
                # the last round's fresh flows only)
                await _check(state, backend, config, flows, "after the storm", IDS, ask=not wedges)

                # The last round, no kills: the control plane still does what it is told.
                for fid in IDS:
                    if fid in state["flows"]:
                        await _until_done(flows.stop_flow, fid, "not-found")
                # tansu can wedge a group for good when its members vanish together,
                # and pulsar-lite keeps a killed process's consumers (the brokers'
                # declared quirks); the storm kills members at random, so there the
                # last round starts flows of fresh ids.
                chosen = [f"t{i}" for i in range(3)] if wedges else sorted(rng.sample(IDS, 3))
                for fid in chosen:
                    await _until_done(lambda w, f: flows.start_flow(w, f, "chunks"), fid, "exists")
                state = await _quiet(config, flows, self.quiet)
                assert state["flows"] == {"default", *chosen}, state
                await _check(state, backend, config, flows, "after the last round",
                             IDS + (chosen if wedges else []),
                             ask_only=set(chosen) if wedges else None)
        except BaseException:
            print(logs())
            raise
        finally:
            print(f"\n[storm {self.broker_name}] {STORM_SECONDS:g}s, kills {dict(sorted(kills.items()))}, "
                  f"operations {dict(sorted(outcomes.items()))}")

        for s in running.values():
            code = await s.terminate()
            assert code == 0, f"{s.script} exited {code}:\n{s.tail()}"
        assert sum(kills.values()) >= STORM_SECONDS / 3 - 1
        assert answered[0] > 0, f"the flow service answered nothing during the storm: {outcomes}"


async def _until_done(call: Callable[[str, str], Awaitable[Any]], fid: str, done: str) -> None:
    """Ask until answered: ``unavailable`` and no answer are worth asking again
    (``ServiceError`` says so); ``done`` is what a repeat of a request that did
    land is told (``exists`` for a start, ``not-found`` for a stop)."""
    deadline = time.monotonic() + WAIT
    repeated = False
    while True:
        try:
            await call(WS, fid)
            return
        except ServiceError as exc:
            if repeated and exc.type == done:
                return
            if exc.type != "unavailable" or time.monotonic() > deadline:
                raise
        except PubSubTimeoutError:
            if time.monotonic() > deadline:
                raise
        repeated = True
        await asyncio.sleep(1.0)


async def _snapshot(config: ConfigClient) -> dict[str, Any]:
    return {
        "flows": set(await config.keys(WS, "flow")),
        "entries": set(await config.keys(WS, "processor:chunker")),
        "starting": sorted(await config.keys("__system__", "flow-starting")),
        "stopping": sorted(await config.keys("__system__", "flow-stopping")),
        "flags": set(await config.keys("__system__", "init-state")),
    }


async def _quiet(config: ConfigClient, flows: FlowClient, still: float = 3.0) -> dict[str, Any]:
    """The store's state once no start or stop is in progress or waiting in the
    flow service's queue, the bootstrapper has converged and nothing changed for
    ``still`` seconds.

    Requests the storm's clients gave up on (no answer in time) still wait in
    the flow service's queue for a restarted flow-svc, and are carried out
    late.  So the flow service must also have answered a list-flows (through
    that queue) that agrees with the store, at least ``still`` seconds before
    the state counts as quiet: every request queued before it has been taken
    by then, and what it does shows in the store within the window.  A
    list-flows that gets no answer does not count, and does not reset the
    window (a flow-svc may still be starting)."""
    deadline = time.monotonic() + WAIT
    last: dict[str, Any] | None = None
    since = answered = time.monotonic()
    heard = False
    while True:
        try:
            state = await _snapshot(config)
        except PubSubError:
            state = None
        now = time.monotonic()
        if state != last:
            last, since, heard = state, now, False
        elif state is not None and not heard:
            try:
                listed = set(await flows.list_flows(WS))
            except PubSubError:
                listed = None
            if listed == state["flows"]:
                heard, answered = True, time.monotonic()
        elif (state is not None and not state["starting"] and not state["stopping"]
              and state["flags"] >= INIT_FLAGS and now - since >= still
              and now - answered >= still):
            return state
        if now > deadline:
            pytest.fail(f"the control plane did not settle within {WAIT}s: {last}")
        await asyncio.sleep(0.5)


async def _asked(call: Callable[..., Awaitable[Any]], *args: Any, attempts: int = 5) -> Any:
    """``call(*args)``, asked again when it gets no answer: a service still busy after
    the storm may miss a request, and on pulsar-lite a killed service's consumer
    left behind (RESET_LEAVES_CONSUMERS) takes its share of them for good."""
    for attempt in range(attempts):
        try:
            return await call(*args)
        except PubSubTimeoutError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def _check(state: dict[str, Any], backend: PubSubBackend, config: ConfigClient,
                 flows: FlowClient, when: str, ids: list[str], *, ask: bool = True,
                 ask_only: set[str] | None = None) -> None:
    running = state["flows"]
    assert "default" in running, f"{when}: the bootstrapper's flow is missing: {state}"
    assert state["entries"] == running, f"{when}: processor entries != flows: {state}"
    listed = set(await _asked(flows.list_flows, WS))
    assert listed == running, f"{when}: list-flows {listed} != the store's {running}"
    for fid in running:
        record = json.loads(await _asked(config.get, WS, "flow", fid) or "{}")
        assert record.get("status") == "running", (fid, record)
    if backend.capabilities.queue_lifecycle:
        for fid in ids:
            request_t, _ = chunk_topics(WS, fid)
            exists = await backend.queue_exists(request_t, "chunker")
            assert exists == (fid in running), f"{when}: flow {fid} running={fid in running}, queue {exists}"
    for fid in sorted(running) if ask else []:
        if ask_only is not None and fid not in ask_only:
            continue
        request_t, response_t = chunk_topics(WS, fid)
        deadline = time.monotonic() + WAIT
        while True:
            rr = RequestResponse(backend, request_t, TextChunkRequest, response_t, TextChunkResponse)
            try:
                await rr.start()
                break
            except QueueNotFoundError:  # Kafka: the chunker makes the response topic
                assert time.monotonic() < deadline, f"{when}: flow {fid} has no response topic"
                await asyncio.sleep(0.5)
        try:
            reply = await _first_answer(rr, TextChunkRequest("abcdefgh"))
            assert reply.chunks == ["abcdefgh"], (fid, reply)
        finally:
            await rr.stop()


class TestStormPulsar(StormBattery):
    broker_name = "pulsar"


class TestStormKafka(StormBattery):
    broker_name = "kafka"
    # A member killed without leaving keeps its partitions, and the requests on
    # them, until the group's session timeout (6 s) ends it.
    quiet = 15.0


class TestStormRabbitMQ(StormBattery):
    broker_name = "rabbitmq"


class TestStormMQTT(StormBattery):
    broker_name = "mqtt"
