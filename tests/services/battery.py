"""The control plane against one backend, in-process: one battery, one subclass per broker.

Each test starts its own config service (SQLite in a temporary directory),
flow service and processors, each on a backend of its own (its own broker
connection, as separate processes would have), and stops them at the end.
``tests/services/test_processes.py`` runs the same services as processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import prometheus_client
import pytest

from bootstrap.bootstrapper import Bootstrapper
from bootstrap.config_service import ConfigService, PostgresStore, SqliteStore
from bootstrap.dev import DEFAULT_INITIALISERS
from bootstrap.flow_service import FlowService
from bootstrap.processors.chunker import Chunker
from tests.brokers import SLOW_FIRST_JOIN, STUCK_GROUP_AFTER_CONCURRENT_LEAVE, Broker
from tests.services.helpers import (
    CHUNK_SIZE_TYPE,
    PG_DSN,
    chunk_blueprint,
    chunk_topics,
    drop_schema,
    eventually,
    pg_schema,
)
from tests.services.initialisers import RUNS
from trustgraph_pubsub import (
    Consumer,
    Message,
    Producer,
    PubSubBackend,
    PubSubTimeoutError,
    RequestResponse,
    ServiceError,
)
from trustgraph_pubsub.config_client import ConfigClient
from trustgraph_pubsub.config_receiver import ConfigReceiver
from trustgraph_pubsub.flow_client import FlowClient
from trustgraph_pubsub.flow_processor import ConsumerSpec, Flow, FlowProcessor
from trustgraph_pubsub.metrics import Metrics
from trustgraph_schema import (
    ConfigPush,
    ConfigRequest,
    ConfigResponse,
    FlowRequest,
    TextChunkRequest,
    TextChunkResponse,
    config_push_queue,
    config_request_queue,
    config_response_queue,
)

COUNTING = "tests.services.initialisers.Counting"
#: Generous: Kafka (tansu) takes about 5 s for each new consumer group's first join.
WAIT = 60.0


class ControlPlane:
    """The services of one test, and a way to start more."""

    def __init__(self, broker: Broker, tmp: Path) -> None:
        self.broker = broker
        self.tmp = tmp
        self.backends: list[PubSubBackend] = []
        self.running: list[Any] = []
        self.config_svc: ConfigService | None = None
        self.flow_svc: FlowService | None = None
        self.tag = uuid.uuid4().hex[:8]
        self._fresh: set[tuple[str, str]] = set()

    def backend(self) -> PubSubBackend:
        b = self.broker.make_backend()
        self.backends.append(b)
        return b

    async def start(self, proc: Any) -> Any:
        await proc.start()
        self.running.append(proc)
        return proc

    def _group(self, params: dict[str, Any], name: str) -> None:
        """On a broker whose group joins are slow, a group per test: rejoining
        the group an earlier test's service just left can take 15 s and more there."""
        if SLOW_FIRST_JOIN in self.broker.quirks:
            params.setdefault("subscription", f"{name}-{self.tag}")

    async def start_config(self, **params: Any) -> ConfigService:
        params.setdefault("store", SqliteStore(self.tmp / "config.db"))
        self._group(params, "config-service")
        svc = ConfigService(backend=self.backend(), concurrency=8, **params)
        await self._forget_stale_of(svc)
        self.config_svc = await self.start(svc)
        return self.config_svc

    async def start_flow(self, **params: Any) -> FlowService:
        params.setdefault("release_wait", 0.5)
        self._group(params, "flow-service")
        svc = FlowService(backend=self.backend(), **params)
        await self._forget_stale_of(svc)
        self.flow_svc = await self.start(svc)
        return self.flow_svc

    async def _forget_stale_of(self, svc: Any) -> None:
        """Delete the service's request queue before its first replica starts.

        Tests share one broker: a request an earlier test sent to a service that
        was gone (a timeout test, a killed process) still waits in the durable
        queue, and a new service would serve it against this test's store.
        """
        key = (svc.request_topic, svc.subscription)
        if key not in self._fresh:
            self._fresh.add(key)
            with contextlib.suppress(Exception):
                await self.backends[-1].delete_queue(*key)

    async def start_both(self) -> None:
        """The config and flow services, started together (a group join each)."""
        await asyncio.gather(self.start_config(), self.start_flow())

    async def close(self) -> None:
        running, self.running = self.running, []
        backends, self.backends = self.backends, []
        spaced = STUCK_GROUP_AFTER_CONCURRENT_LEAVE in self.broker.quirks
        previous: type | None = None
        for proc in reversed(running):
            if spaced and type(proc) is previous and not isinstance(proc, Probe):
                # Two replicas are members of one group: leaving within about 0.2 s
                # of each other can wedge it on this broker for good (the quirk).
                await asyncio.sleep(1.2)
            previous = type(proc)
            with contextlib.suppress(Exception):
                await proc.stop()
        for b in backends:
            with contextlib.suppress(Exception):
                await b.close()


class Probe(FlowProcessor):
    """A FlowProcessor that consumes its flows' ``input`` topic and counts."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.handled = 0
        self.register(ConsumerSpec("input", None, self.on_input))

    async def on_input(self, flow: Flow, msg: Message) -> None:
        self.handled += 1


class HungConfigService(ConfigService):
    """A replica whose every request hangs until ``release`` is set."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.release = asyncio.Event()
        self.taken = 0

    async def _handle(self, data: bytes, properties: dict[str, str]) -> Any:
        self.taken += 1
        await self.release.wait()
        return await super()._handle(data, properties)


class ControlPlaneBattery:
    broker_name: ClassVar[str]
    #: the broker hands a shared subscription's next message to a consumer with
    #: room for it (its prefetch), so a busy one is passed over.  False on Kafka
    #: (by partition: a hung member keeps its partitions' requests until the group
    #: evicts it) and Mosquitto (round robin, queued behind a busy session).
    dispatch_honours_prefetch: ClassVar[bool] = True

    @pytest.fixture
    async def cp(self, broker: Broker, tmp_path: Path) -> AsyncIterator[ControlPlane]:
        plane = ControlPlane(broker, tmp_path)
        try:
            yield plane
        finally:
            await plane.close()

    # -- the config service ---------------------------------------------------

    async def test_config_operations_round_trip(self, cp: ControlPlane) -> None:
        await cp.start_config()
        async with ConfigClient(cp.backend(), timeout=WAIT) as c:
            v1 = await c.put("w", "prompt", "system", '"be brief"')
            v2 = await c.put_many("w", [("prompt", "user", '"hi"'), ("flow", "f", "{}")])
            assert (v1, v2) == (1, 2)
            assert await c.get("w", "prompt", "system") == '"be brief"'
            assert await c.get("w", "prompt", "absent") is None  # not an error
            assert await c.keys("w", "prompt") == ["system", "user"]
            assert await c.values("w", "prompt") == {"system": '"be brief"', "user": '"hi"'}
            await c.put("w2", "prompt", "system", '"other"')
            assert await c.values_all_workspaces("prompt") == {
                "w": {"system": '"be brief"', "user": '"hi"'}, "w2": {"system": '"other"'}
            }
            assert await c.workspaces_for_type("prompt") == ["w", "w2"]
            assert await c.get_all("w") == {
                "flow": {"f": "{}"}, "prompt": {"system": '"be brief"', "user": '"hi"'}
            }
            v = await c.put_many("w", [("prompt", "new", "1")], delete=[("prompt", "user")])
            assert v == 4 and await c.keys("w", "prompt") == ["new", "system"]
            assert await c.delete("w", "prompt", "system") == 5
            assert c.version == 5

    async def test_config_errors_are_answers_never_silence(self, cp: ControlPlane) -> None:
        await cp.start_config()
        async with ConfigClient(cp.backend(), timeout=WAIT) as c:
            cases: list[tuple[ConfigRequest, str, str]] = [
                (ConfigRequest("explode", workspace="w"), "bad-operation", "explode"),
                (ConfigRequest("get", workspace="w"), "bad-request", "keys"),
                (ConfigRequest("getvalues", type="t"), "bad-request", "workspace"),
                (ConfigRequest("put", workspace="w"), "bad-request", "values"),
                (ConfigRequest("list", workspace="", type="t"), "bad-request", "workspace"),
            ]
            for request, etype, names in cases:
                with pytest.raises(ServiceError) as err:
                    await c.call(request)
                assert err.value.type == etype and names in err.value.detail, err.value
            with pytest.raises(ServiceError) as err:
                await c.put("w", "t", "k", "not json")
            assert err.value.type == "bad-request" and "t/k" in err.value.detail
        # Bytes that are not a ConfigRequest at all still get an answer.
        async with RequestResponse(
            cp.backend(), config_request_queue, None, config_response_queue, ConfigResponse
        ) as raw:
            for junk in (b"\xff\x00garbage", b'{"workspace": "w"}', b'{"operation": 7}'):
                reply = await raw.request(junk, timeout=WAIT)
                assert reply.error is not None and reply.error.type == "bad-request", junk
            assert "operation" in reply.error.message

    async def test_large_answers_come_in_parts(self, cp: ControlPlane) -> None:
        await cp.start_config(max_answer_bytes=64 * 1024)
        big = '"' + "x" * 1000 + '"'
        async with ConfigClient(cp.backend(), timeout=WAIT) as c:
            await c.put_many("w", [("doc", f"k{i:04}", big) for i in range(300)])  # ~300 KiB
            assert len(await c.values("w", "doc")) == 300
            assert len(await c.get_all("w"))
            assert len((await c.values_all_workspaces("doc"))["w"]) == 300
            with pytest.raises(ServiceError) as err:
                await c.put("w", "doc", "huge", '"' + "y" * 70_000 + '"')
            assert "doc/huge" in err.value.detail

    async def test_each_write_pushes_once_and_reserved_workspaces_are_never_named(
        self, cp: ControlPlane
    ) -> None:
        await cp.start_config()
        pushes: list[ConfigPush] = []

        async def on_push(msg: Message) -> None:
            pushes.append(msg.value())

        async with Consumer(cp.backend(), config_push_queue, f"probe-{uuid.uuid4().hex[:8]}",
                            ConfigPush, on_push, ephemeral=True), \
                ConfigClient(cp.backend(), timeout=WAIT) as c:
            await c.put_many("w", [("a", "1", "1"), ("b", "1", "1")])
            await c.put("__system__", "init-state", "x", '"done"')  # stored, never broadcast
            await c.delete("w", "a", "1")
            # one write across workspaces: one version, one push naming only the public one
            await c.write([("v", "c", "1", "2"), ("__system__", "s", "k", "3")], [("w", "b", "1")])
            await eventually(lambda: len(pushes) >= 3, WAIT, what="three pushes")
            await asyncio.sleep(0.5)
            assert await c.get("__system__", "s", "k") == "3"
        assert [(p.version, p.changes, p.previous) for p in pushes] == [
            (1, {"a": ["w"], "b": ["w"]}, 0), (3, {"a": ["w"]}, 1), (4, {"b": ["w"], "c": ["v"]}, 3)
        ]
        assert cp.config_svc is not None and cp.config_svc.pushes == 3

    async def test_receiver_calls_only_changed_types_per_workspace(self, cp: ControlPlane) -> None:
        await cp.start_config()
        calls: list[tuple[str, str, dict[str, str]]] = []
        async with ConfigClient(cp.backend(), timeout=WAIT) as c:
            await c.put("w1", "prompt", "p", "1")
            receiver = ConfigReceiver(cp.backend(), name="test", resync_interval=3600)

            def on(type_: str) -> Any:
                return lambda ws, values, version: calls.append((type_, ws, values))

            receiver.on("prompt", on("prompt"))
            receiver.on("tool", on("tool"))

            def boom(ws: str, values: dict[str, str], version: int) -> None:
                raise RuntimeError("a broken handler")

            receiver.on("tool", boom)
            async with receiver:
                await receiver.wait_ready(WAIT)
                assert calls == [("prompt", "w1", {"p": "1"})]
                calls.clear()
                await c.put("w2", "tool", "t", "2")          # one type, one workspace
                await c.put("w1", "other", "o", "3")         # nobody's type
                await c.put("__template__", "prompt", "x", "4")  # reserved: not named
                await c.delete("w1", "prompt", "p")          # emptied: {}
                await eventually(lambda: receiver.version == 5, WAIT, what="version 5")
                assert calls == [("tool", "w2", {"t": "2"}), ("prompt", "w1", {})]
                assert receiver.full_fetches == 1

    async def test_receiver_refetches_everything_after_a_missed_push(self, cp: ControlPlane) -> None:
        svc = await cp.start_config()
        seen: dict[str, dict[str, str]] = {}
        async with ConfigClient(cp.backend(), timeout=WAIT) as c, \
                ConfigReceiver(cp.backend(), name="gap", resync_interval=3600) as receiver:
            receiver.on("prompt", lambda ws, values, version: seen.__setitem__(ws, values))
            await receiver.wait_ready(WAIT)
            # A write whose push is lost: straight into the store.
            await svc.store.write("w", [("prompt", "lost", "1")], [])
            await c.put("w", "prompt", "next", "2")
            await eventually(lambda: seen.get("w") == {"lost": "1", "next": "2"}, WAIT,
                             what="the missed write to be fetched")
            assert receiver.full_fetches == 2 and receiver.version == 2

    async def test_a_late_config_service_is_waited_for(self, cp: ControlPlane) -> None:
        receiver = ConfigReceiver(cp.backend(), name="late", resync_interval=3600)
        receiver.client.timeout = 2.0
        seen: list[dict[str, str]] = []
        receiver.on("t", lambda ws, values, version: seen.append(values))
        async with receiver:
            await asyncio.sleep(3)
            assert not receiver.ready.is_set()
            svc = await cp.start_config()
            await svc.store.write("w", [("t", "k", "1")], [])
            await receiver.wait_ready(WAIT)
            assert seen == [{"k": "1"}]

    @pytest.mark.parametrize("store", ["sqlite", "postgres", "postgres-two-replicas"])
    async def test_fifty_concurrent_clients_lose_no_update(self, cp: ControlPlane, store: str) -> None:
        schema = None
        if store == "sqlite":
            await cp.start_config()
        else:
            schema = await pg_schema()
            for _ in range(2 if store == "postgres-two-replicas" else 1):
                await cp.start_config(store=PostgresStore(PG_DSN, schema=schema, pool_size=5))
        replicas = [p for p in cp.running if isinstance(p, ConfigService)]
        backends = [cp.backend(), cp.backend()]
        clients = [ConfigClient(backends[i % 2], timeout=WAIT) for i in range(50)]
        await asyncio.gather(*(c.start() for c in clients))
        try:
            async def writer(i: int, c: ConfigClient) -> list[int]:
                return [await c.put("w", "t", f"{i}-{j}", str(j)) for j in range(4)]

            versions = [v for vs in await asyncio.gather(
                *(writer(i, c) for i, c in enumerate(clients))) for v in vs]
            assert sorted(versions) == list(range(1, 201))
            assert len(await clients[0].keys("w", "t")) == 200
            if len(replicas) == 2:
                served = [sum(r.requests.values()) for r in replicas]
                assert all(served), f"both replicas serve requests: {served}"
        finally:
            await asyncio.gather(*(c.stop() for c in clients))
            if schema is not None:
                await cp.close()
                await drop_schema(schema)

    async def test_a_hung_replica_strands_few_requests(self, cp: ControlPlane) -> None:
        """A replica takes no more requests than it serves at once, so one whose
        handlers all hang strands at most that many (plus its client's small
        buffer) and the live replica answers the rest.  With the ``Consumer``'s
        default prefetch of 100 it would take every other request."""
        if not self.dispatch_honours_prefetch:
            pytest.skip(f"{self.broker_name} does not pass over a consumer that has no room")
        live = await cp.start_config()
        hung = await cp.start(HungConfigService(
            backend=cp.backend(), concurrency=2, store=SqliteStore(cp.tmp / "config.db"),
            subscription=live.subscription,
        ))
        try:
            async with ConfigClient(cp.backend(), timeout=8.0) as c:
                results = await asyncio.gather(
                    *(c.keys("w", f"t{i}") for i in range(24)), return_exceptions=True
                )
        finally:
            hung.release.set()
        lost = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(r, PubSubTimeoutError) for r in lost), lost
        assert hung.taken <= 2, f"the hung replica ran {hung.taken} handlers at concurrency 2"
        assert len(lost) <= 4, f"{len(lost)} of 24 requests stranded on the hung replica"

    # -- flows ----------------------------------------------------------------

    async def test_flow_end_to_end_with_the_chunker(self, cp: ControlPlane) -> None:
        await cp.start_both()
        chunker = await cp.start(Chunker(backend=cp.backend()))
        backend = cp.backend()
        request_t, response_t = chunk_topics("ws1", "f1")
        async with FlowClient(backend, timeout=WAIT) as flows, \
                ConfigClient(backend, timeout=WAIT) as config:
            await config.put("ws1", "parameter-type", "chunk-size", CHUNK_SIZE_TYPE)
            await config.put("ws1", "parameter-type", "chunk-overlap", '{"type": "integer"}')
            await flows.put_blueprint("ws1", "chunks", chunk_blueprint())
            with pytest.raises(ServiceError) as err:
                await flows.put_blueprint("ws1", "bad", {"flow": {"nocolon": {}}})
            assert err.value.type == "bad-blueprint" and "nocolon" in err.value.detail
            with pytest.raises(ServiceError) as err:
                await flows.start_flow("ws1", "f1", "missing")
            assert err.value.type == "not-found"
            await flows.start_flow("ws1", "f1", "chunks", parameters={"chunk-size": "3"})
            with pytest.raises(ServiceError) as err:
                await flows.start_flow("ws1", "f1", "chunks")
            assert err.value.type == "exists"
            record = await flows.get_flow("ws1", "f1")
            assert record["parameters"] == {"chunk-size": "3", "chunk-overlap": "0"}
            assert record["status"] == "running"
            assert await flows.list_flows("ws1") == ["f1"]
            caps = backend.capabilities
            if caps.queue_lifecycle:
                assert await backend.queue_exists(request_t, "chunker")
            await eventually(lambda: ("ws1", "f1") in chunker.flows, WAIT, what="chunker flow")
            async with RequestResponse(backend, request_t, TextChunkRequest,
                                       response_t, TextChunkResponse) as rr:
                reply = await rr.request(TextChunkRequest("hello world"), timeout=WAIT)
                assert reply.chunks == ["hel", "lo ", "wor", "ld"]
                reply = await rr.request(TextChunkRequest("abc", chunk_size=2, chunk_overlap=2),
                                         timeout=WAIT)
                assert reply.error is not None and "overlap" in reply.error.message
            with pytest.raises(ServiceError) as err:
                await flows.delete_blueprint("ws1", "chunks")
            assert err.value.type == "in-use" and "f1" in err.value.detail
            await flows.stop_flow("ws1", "f1")
            assert await flows.list_flows("ws1") == []
            assert await config.keys("ws1", "processor:chunker") == []
            assert ("ws1", "f1") not in chunker.flows
            if caps.queue_lifecycle:
                assert not await backend.queue_exists(request_t, "chunker")
            await flows.delete_blueprint("ws1", "chunks")
            assert await flows.list_blueprints("ws1") == []

    async def test_a_changed_definition_restarts_the_flow(self, cp: ControlPlane) -> None:
        await cp.start_config()
        chunker = await cp.start(Chunker(backend=cp.backend()))
        request_t, response_t = chunk_topics("ws", "f")
        entry = {"topics": {"request": request_t, "response": response_t},
                 "parameters": {"chunk-size": "2"}}
        async with ConfigClient(cp.backend(), timeout=WAIT) as config, \
                RequestResponse(cp.backend(), request_t, TextChunkRequest,
                                response_t, TextChunkResponse) as rr:
            await chunker.receiver.wait_ready(WAIT)  # type: ignore[union-attr]
            await config.put("ws", "processor:chunker", "f", json.dumps(entry))
            await eventually(lambda: ("ws", "f") in chunker.flows, WAIT)
            assert (await rr.request(TextChunkRequest("abcd"), timeout=WAIT)).chunks == ["ab", "cd"]
            entry["parameters"] = {"chunk-size": "3"}
            await config.put("ws", "processor:chunker", "f", json.dumps(entry))
            await eventually(
                lambda: chunker.flows.get(("ws", "f")) is not None
                and chunker.flows[("ws", "f")].parameters == {"chunk-size": "3"}, WAIT)
            assert (await rr.request(TextChunkRequest("abcd"), timeout=WAIT)).chunks == ["abc", "d"]

    async def test_twenty_processors_one_write_one_push_own_types_only(self, cp: ControlPlane) -> None:
        await cp.start_both()
        svc = cp.config_svc
        assert svc is not None
        shared = cp.backend()
        probes = await asyncio.gather(
            *(cp.start(Probe(backend=shared, id=f"p{i:02}")) for i in range(20))
        )
        await asyncio.gather(*(p.receiver.wait_ready(WAIT) for p in probes))
        blueprint = {
            "description": "twenty stages",
            "flow": {
                f"p{i:02}:{{id}}": {"topics": {
                    "input": f"q1/tg/flow/stage{i:02}.{{workspace}}.{{id}}",
                    "output": f"q1/tg/flow/stage{i + 1:02}.{{workspace}}.{{id}}"}}
                for i in range(20)
            },
        }
        pushes: list[ConfigPush] = []

        async def on_push(msg: Message) -> None:
            pushes.append(msg.value())

        async with FlowClient(cp.backend(), timeout=WAIT) as flows:
            await flows.put_blueprint("w", "twenty", blueprint)
            async with Consumer(cp.backend(), config_push_queue, f"count-{uuid.uuid4().hex[:8]}",
                                ConfigPush, on_push, ephemeral=True):
                before_pushes = svc.pushes
                before = svc.requests.copy()
                await flows.start_flow("w", "big", "twenty")
                await eventually(lambda: all(("w", "big") in p.flows for p in probes), WAIT,
                                 what="all twenty processors running the flow")
                await asyncio.sleep(1.0)
                assert svc.pushes - before_pushes == 1
                assert len(pushes) == 1 and sorted(pushes[0].changes) == sorted(
                    ["flow"] + [f"processor:p{i:02}" for i in range(20)])
                fetched = svc.requests - before
                by_processors = {k: n for k, n in fetched.items() if k[1].startswith("processor:")}
                assert by_processors == {("getvalues", f"processor:p{i:02}"): 1 for i in range(20)}
                assert fetched[("config", "")] == 0
                # Messages flow through the stages.
                async with Producer(cp.backend(), "q1/tg/flow/stage05.w.big", None) as prod:
                    await prod.send(b"x")
                await eventually(lambda: probes[5].handled == 1, WAIT)
                await flows.stop_flow("w", "big")
                await eventually(lambda: not any(p.flows for p in probes), WAIT)

    async def test_a_shared_queue_outlives_the_first_of_its_flows(self, cp: ControlPlane) -> None:
        await cp.start_both()
        backend = cp.backend()
        shared_t = f"q1/tg/flow/shared-{uuid.uuid4().hex[:8]}"
        blueprint = {"flow": {"worker:{id}": {"topics": {"input": shared_t}}}}
        async with FlowClient(backend, timeout=WAIT) as flows:
            await flows.put_blueprint("w", "shared", blueprint)
            await flows.start_flow("w", "a", "shared")
            await flows.start_flow("w", "b", "shared")
            await flows.stop_flow("w", "a")
            if backend.capabilities.queue_lifecycle:
                assert await backend.queue_exists(shared_t, "worker")
            await flows.stop_flow("w", "b")
            if backend.capabilities.queue_lifecycle:
                assert not await backend.queue_exists(shared_t, "worker")

    async def test_a_start_cut_short_is_settled(self, cp: ControlPlane) -> None:
        """What a flow-svc killed between making a flow's queues and writing the flow
        leaves (an intent record and the queues) is taken back: at start-up, and by
        the next operation on that flow id."""
        await cp.start_config()
        backend = cp.backend()
        tag = uuid.uuid4().hex[:8]
        shared_t, own_t = f"q1/tg/flow/cut-{tag}", f"q1/tg/flow/cut2-{tag}"

        def intent(*topics: str) -> str:
            return json.dumps({"queues": [[t, "worker"] for t in topics], "processors": [],
                               "topics": list(topics), "status": "running"})

        async def intents() -> dict[str, str]:
            return await config.values("__system__", "flow-starting")

        async with ConfigClient(backend, timeout=WAIT) as config:
            await config.put("__system__", "flow-starting", "w:a", intent(shared_t))
            await config.put("__system__", "flow-starting", "w:b", intent(shared_t))
            await backend.ensure_queue(shared_t, "worker")
            flow_svc = await cp.start_flow()
            await asyncio.wait_for(flow_svc.recovered.wait(), WAIT)
            assert await intents() == {}
            if backend.capabilities.queue_lifecycle:
                assert not await backend.queue_exists(shared_t, "worker")

            await config.put("__system__", "flow-starting", "w:c", intent(own_t))
            await backend.ensure_queue(own_t, "worker")
            async with FlowClient(backend, timeout=WAIT) as flows:
                with pytest.raises(ServiceError) as err:
                    await flows.stop_flow("w", "c")
                assert err.value.type == "not-found"
            assert await intents() == {}
            if backend.capabilities.queue_lifecycle:
                assert not await backend.queue_exists(own_t, "worker")

    async def test_flow_requests_that_cannot_be_served(self, cp: ControlPlane) -> None:
        await cp.start_both()
        backend = cp.backend()
        async with FlowClient(backend, timeout=WAIT) as flows, \
                ConfigClient(backend, timeout=WAIT) as config:
            await config.put("w", "parameter-type", "chunk-size", CHUNK_SIZE_TYPE)
            await flows.put_blueprint("w", "chunks", chunk_blueprint())
            for args, kwargs, etype, words in [
                (("w", "f", "chunks"), {"parameters": {"chunk-size": "0"}}, "bad-request", "minimum"),
                (("w", "f", "chunks"), {"parameters": {"nope": "1"}}, "bad-request", "nope"),
                (("w", "bad id", "chunks"), {}, "bad-request", "flow id"),
                (("__system__", "f", "chunks"), {}, "bad-request", "reserved"),
            ]:
                with pytest.raises(ServiceError) as err:
                    await flows.start_flow(*args, **kwargs)
                assert err.value.type == etype and words in err.value.detail, err.value
            with pytest.raises(ServiceError) as err:
                await flows.stop_flow("w", "never-started")
            assert err.value.type == "not-found"
            with pytest.raises(ServiceError) as err:
                await flows.call(FlowRequest("fly"))
            assert err.value.type == "bad-operation"

    async def test_a_stop_cuts_short_a_request_that_waits_on_a_stopped_service(
        self, cp: ControlPlane
    ) -> None:
        """All of a deployment gets SIGTERM at once: a flow request waiting on a
        config service that is gone must not hold the flow service's stop past
        ``--drain-timeout``, and the request is answered by the next replica."""
        metrics = Metrics(prometheus_client.CollectorRegistry())
        svc = await cp.start_flow(drain_timeout=1.0, config_timeout=WAIT, metrics=metrics)
        backend = cp.backend()
        async with FlowClient(backend, timeout=3 * WAIT) as flows:
            asked = asyncio.create_task(flows.list_flows("w"))
            labels = {"topic": svc.request_topic, "subscription": svc.subscription,
                      "backend": cp.broker.name}
            await eventually(lambda: metrics.value("messages_total", **labels) >= 1, WAIT,
                             what="the flow service to take the request")
            began = time.monotonic()
            await svc.stop()
            took = time.monotonic() - began
            assert took < 1.0 + 5.0, f"stop took {took:.1f}s with a 1 s drain timeout"
            assert not asked.done()
            await cp.start_config()
            await cp.start_flow()
            assert await asked == []

    async def test_no_reply_is_a_timeout(self, cp: ControlPlane) -> None:
        async with ConfigClient(cp.backend(), timeout=1.0) as c:
            with pytest.raises(PubSubTimeoutError):
                await c.get("w", "t", "k")

    # -- the bootstrapper -------------------------------------------------------

    def bootstrapper(self, cp: ControlPlane, **params: Any) -> Bootstrapper:
        params.setdefault("gate_interval", 0.3)
        params.setdefault("converge_interval", 0.3)
        params.setdefault("service_timeout", 2.0)
        return Bootstrapper(backend=cp.backend(), **params)

    async def test_bootstrap_converges_from_empty(self, cp: ControlPlane) -> None:
        await cp.start_both()
        chunker = await cp.start(Chunker(backend=cp.backend()))
        boot = await cp.start(self.bootstrapper(cp, initialisers_file=str(DEFAULT_INITIALISERS)))
        await asyncio.wait_for(boot.converged.wait(), WAIT)
        backend = cp.backend()
        async with ConfigClient(backend, timeout=WAIT) as config:
            state = await config.values("__system__", "init-state")
            assert {k: json.loads(v) for k, v in state.items()} == {
                "queues": "v1", "template": "v1", "workspace-default": "v1", "default-flow": "v1"}
            assert "chunks" in (await config.get_all("__template__"))["flow-blueprint"]
            assert await config.keys("default", "flow") == ["default"]
            assert await config.keys("__workspaces__", "workspace") == ["default"]
        await eventually(lambda: ("default", "default") in chunker.flows, WAIT)
        request_t, response_t = chunk_topics("default", "default")
        async with RequestResponse(backend, request_t, TextChunkRequest,
                                   response_t, TextChunkResponse) as rr:
            reply = await rr.request(TextChunkRequest("abc", chunk_size=2), timeout=WAIT)
            assert reply.chunks == ["ab", "c"]

    async def test_bootstrap_flags_restarts_and_failures(self, cp: ControlPlane) -> None:
        await cp.start_both()
        tag = uuid.uuid4().hex[:8]

        def specs(b_flag: str) -> list[dict[str, Any]]:
            return [
                {"class": COUNTING, "name": "a", "flag": "v1", "params": {"label": f"a-{tag}"}},
                {"class": "tests.services.initialisers.Failing", "name": "f", "flag": "v1"},
                {"class": COUNTING, "name": "b", "flag": b_flag, "params": {"label": f"b-{tag}"}},
            ]

        async def run_until(boot: Bootstrapper, what: Any) -> None:
            await cp.start(boot)
            await eventually(what, WAIT, what="the bootstrapper's wakes")
            await boot.stop()

        first = self.bootstrapper(cp, initialisers=specs("v1"))
        await run_until(first, lambda: first.stored.get("b") == "v1" and first.wakes >= 2)
        assert RUNS[f"a-{tag}"] == 1 and RUNS[f"b-{tag}"] == 1  # the failing one did not block b
        assert first.state == "converging" and "f" not in first.stored
        # A restart does not run completed initialisers again.
        again = self.bootstrapper(cp, initialisers=specs("v1"))
        await run_until(again, lambda: again.wakes >= 2)
        assert RUNS[f"a-{tag}"] == 1 and RUNS[f"b-{tag}"] == 1
        # Bumping one flag runs exactly that one.
        bumped = self.bootstrapper(cp, initialisers=specs("v2"))
        await run_until(bumped, lambda: bumped.stored.get("b") == "v2")
        assert RUNS[f"a-{tag}"] == 1 and RUNS[f"b-{tag}"] == 2

    async def test_bootstrap_waits_for_a_late_config_service(self, cp: ControlPlane) -> None:
        tag = uuid.uuid4().hex[:8]
        boot = await cp.start(self.bootstrapper(cp, initialisers=[
            {"class": COUNTING, "name": "only", "flag": "v1", "params": {"label": tag}}]))
        await eventually(lambda: boot.wakes >= 2, WAIT)
        assert boot.state == "gate" and RUNS[tag] == 0
        await cp.start_both()
        boot.wake_now()
        await asyncio.wait_for(boot.converged.wait(), WAIT)
        assert RUNS[tag] == 1
