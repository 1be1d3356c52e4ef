"""The flow service (console script ``flow-svc``): blueprints, flow start and stop.

Blueprints and flows live in the config service (types ``flow-blueprint``
and ``flow``), so the flow service keeps no state of its own and any replica
can take over after a crash.  Operations (``FlowRequest.operation``), all in
``FlowRequest.workspace``: ``list-blueprints``, ``get-blueprint``,
``put-blueprint`` (validated; a bad blueprint is refused with the reason),
``delete-blueprint`` (refused while a flow uses it), ``list-flows``,
``get-flow``, ``start-flow``, ``stop-flow``.

start-flow: refuse a duplicate id, an unknown blueprint or a reserved
workspace (pushes never name those, so no processor would hear of the flow);
resolve the parameters and substitute the blueprint (``blueprint.py``);
``ensure_queue`` every queue the flow consumes from; then write every
``processor:<name>/<variant>`` entry *and* the flow record in one put: one
version, one push, and a crash leaves either all of it or none.  (The issue
asked for the record after the entries; one write is strictly safer and
costs one push less.)  If the write fails, the queues it made are deleted
again (those no other live flow uses).

The flow record (``flow/<id>``) keeps what the flow resolved to:
``description``, ``blueprint-name``, ``interfaces``, ``parameters``, and
also ``processors`` (the entries written), ``queues`` and ``topics``, so
that stopping needs neither the blueprint (which may have changed since)
nor guesswork about ownership; ``status`` is ``running`` (``stopping`` in
its ``flow-stopping`` copy).

stop-flow is two-phase and resumable, like a Kubernetes finalizer:

1. one write deletes the flow's processor entries and its record from the
   workspace and files the record as ``__system__/flow-stopping/<ws>:<id>``
   (one push, naming the workspace; processors stop that flow's consumers;
   the flow is gone from list-flows and get-flow at once);
2. after ``--release-wait`` seconds for processors to let go of their
   consumers, the queues and topics no other live flow names are deleted
   (CONTROL_PLANE.md hazard 5: ownership is by resolved name, never by
   template).  Errors surface (hazard 6): a delete that keeps failing (a
   consumer still attached, on Kafka) is retried until
   ``--release-timeout``, then reported, and the flow stays ``stopping``.
   Where the backend can tell (``Capabilities.queue_lifecycle``), each
   deleted queue is checked again after a moment and deleted again if a
   straggling consumer re-created it, and the sweep (below) keeps checking
   for two minutes, unless a flow or a start names the queue again (a Kafka
   consumer still joining when the flow stopped commits seconds later);
3. the ``flow-stopping`` entry is deleted.  It lives in a reserved
   workspace, so that write is not pushed: a stop costs one push.

start-flow files its intent first (``__system__/flow-starting/<ws>:<id>``,
the record it is about to write; reserved, so not pushed), then makes the
queues, then writes the entries and the record and deletes the intent in one
write.  A start that fails, or whose write's answer is lost, is *settled* by
reading the store: if the flow record is there the start happened (and is
answered as such); if not, the queues named by the intent and by no live flow
or other intent are deleted, then the intent.  An intent left by a crash is
settled by the next operation on that flow id or by the next start-up, so a
killed flow-svc never leaves queues without a flow.  A start or stop that
fails as ``unavailable`` (the config service or the broker did not answer in
time) is answered with that error and also settled in the background, with
backoff from 1 s to 30 s, until it is done: the state converges even if
nobody asks again.  Every ``--sweep-interval`` (30 s) the service also settles
each filed start and stop, which catches one filed late: a write a killed
flow-svc sent can wait in the config service's queue and land after the
operation was done again.

A start of a flow id whose stop is still in progress is refused
(``exists``).  At start-up the service settles every start it finds filed
under ``flow-starting``, finishes every stop filed under ``flow-stopping``
and ensures the queues of running flows.  Operations on
one flow id, and on one blueprint, are serialised (hazard 4); several
flow-svc replicas are not coordinated with each other, so run one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Iterable, Iterator
from typing import Any, TypeVar

from bootstrap.service import OperationService, RequestError, require
from trustgraph_pubsub import PubSubError, UnsupportedError
from trustgraph_pubsub.config_client import ConfigClient
from trustgraph_pubsub.config_receiver import is_reserved
from trustgraph_pubsub.processor import env_default
from trustgraph_pubsub.retry import Backoff
from trustgraph_schema.services.flow import (
    FlowRequest,
    FlowResponse,
    flow_request_queue,
    flow_response_queue,
)

from .blueprint import (
    BlueprintError,
    check_name,
    instantiate,
    resolve_parameters,
    validate_blueprint,
)

log = logging.getLogger(__name__)

__all__ = ["FlowService", "main"]

T = TypeVar("T")
BLUEPRINT = "flow-blueprint"
FLOW = "flow"
PARAMETER_TYPE = "parameter-type"
RUNNING = "running"
STOPPING = "stopping"
SYSTEM = "__system__"
#: type, in ``__system__``, of the records of flows being stopped; key ``<ws>:<id>``
STOPPING_TYPE = "flow-stopping"
#: type, in ``__system__``, of the intent records of flows being started; key ``<ws>:<id>``
STARTING_TYPE = "flow-starting"


def stopping_key(ws: str, fid: str) -> str:
    return f"{ws}:{fid}"
#: how long a stopped flow's deleted queues are watched for a straggler that makes them again
TOMBSTONE_SECONDS = 120.0
#: queue operations run at once when a flow starts or stops
QUEUE_CONCURRENCY = 8

Queue = tuple[str, str]


def processor_type(name: str) -> str:
    """The config type a processor watches: ``processor:<name>``."""
    return f"processor:{name}"


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RequestError("bad-request", f"{what} is not JSON: {exc}") from None


class FlowService(OperationService):
    """Blueprints and flows, kept in the config service."""

    default_ident = "flow-svc"
    request_topic = flow_request_queue
    response_topic = flow_response_queue
    request_schema = FlowRequest
    response_schema = FlowResponse
    subscription = "flow-service"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        wait = params.get("release_wait")
        self.release_wait = float(1.0 if wait is None else wait)
        self.release_timeout = float(params.get("release_timeout") or 60.0)
        self.sweep_interval = float(params.get("sweep_interval") or 30.0)
        #: queues a stop deleted, watched until the deadline (monotonic) for a
        #: consumer that was still joining and made them again
        self._tombstones: dict[Queue, float] = {}
        self.config_timeout = float(params.get("config_timeout") or 10.0)
        self.config: ConfigClient | None = None
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._queue_slots = asyncio.Semaphore(QUEUE_CONCURRENCY)
        #: set when the start-up pass (resume stopping flows, ensure queues) has run
        self.recovered = asyncio.Event()
        #: background settling of flows whose start or stop failed half-way
        self._settling: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.operations = {
            "list-blueprints": self.op_list_blueprints,
            "get-blueprint": self.op_get_blueprint,
            "put-blueprint": self.op_put_blueprint,
            "delete-blueprint": self.op_delete_blueprint,
            "list-flows": self.op_list_flows,
            "get-flow": self.op_get_flow,
            "start-flow": self.op_start_flow,
            "stop-flow": self.op_stop_flow,
        }

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        super().add_args(parser)
        parser.add_argument(
            "--release-wait", type=float, default=env_default("FLOW_RELEASE_WAIT", 1.0),
            help="seconds stop-flow gives processors to close their consumers before "
            "deleting queues (env FLOW_RELEASE_WAIT, default 1)",
        )
        parser.add_argument(
            "--release-timeout", type=float, default=env_default("FLOW_RELEASE_TIMEOUT", 60.0),
            help="seconds stop-flow keeps retrying queue deletion before it reports the "
            "failure (env FLOW_RELEASE_TIMEOUT, default 60)",
        )
        parser.add_argument(
            "--config-timeout", type=float, default=env_default("CONFIG_TIMEOUT", 10.0),
            help="seconds to wait for the config service per request (default 10)",
        )
        parser.add_argument(
            "--sweep-interval", type=float, default=env_default("FLOW_SWEEP_INTERVAL", 30.0),
            help="seconds between sweeps that settle filed starts and stops nobody is "
            "working on (env FLOW_SWEEP_INTERVAL, default 30)",
        )

    async def open_service(self) -> None:
        self.config = ConfigClient(self.backend, timeout=self.config_timeout, metrics=self.metrics)
        await self.config.start()
        self.supervise("recover", self._recover)

    async def close_service(self) -> None:
        for task in list(self._settling.values()):
            task.cancel()
        if self.config is not None:
            await self.config.stop()

    def _lock(self, *key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _cfg(self, call: Awaitable[T]) -> T:
        """A config call; a config service that cannot be reached is ``unavailable``."""
        try:
            return await call
        except PubSubError as exc:
            raise RequestError("unavailable", f"the config service: {exc}") from exc

    @property
    def _config(self) -> ConfigClient:
        assert self.config is not None
        return self.config

    # -- blueprints ---------------------------------------------------------

    async def op_list_blueprints(self, r: FlowRequest) -> FlowResponse:
        ws = require(r.workspace, "workspace")
        return FlowResponse(blueprint_names=await self._cfg(self._config.keys(ws, BLUEPRINT)))

    async def _blueprint(self, ws: str, name: str) -> dict[str, Any]:
        text = await self._cfg(self._config.get(ws, BLUEPRINT, name))
        if text is None:
            raise RequestError("not-found", f"no blueprint {name!r} in workspace {ws!r}")
        loaded: dict[str, Any] = _loads(text, f"blueprint {name!r}")
        return loaded

    async def op_get_blueprint(self, r: FlowRequest) -> FlowResponse:
        ws, name = require(r.workspace, "workspace"), require(r.blueprint_name, "blueprint_name")
        text = await self._cfg(self._config.get(ws, BLUEPRINT, name))
        if text is None:
            raise RequestError("not-found", f"no blueprint {name!r} in workspace {ws!r}")
        return FlowResponse(blueprint_definition=text)

    async def op_put_blueprint(self, r: FlowRequest) -> FlowResponse:
        ws, name = require(r.workspace, "workspace"), require(r.blueprint_name, "blueprint_name")
        text = require(r.blueprint_definition, "blueprint_definition")
        try:
            check_name(name, "blueprint name")
            validate_blueprint(_loads(text, "blueprint_definition"))
        except BlueprintError as exc:
            raise RequestError("bad-blueprint", str(exc)) from None
        async with self._lock("blueprint", ws, name):
            await self._cfg(self._config.put(ws, BLUEPRINT, name, text))
        return FlowResponse()

    async def op_delete_blueprint(self, r: FlowRequest) -> FlowResponse:
        ws, name = require(r.workspace, "workspace"), require(r.blueprint_name, "blueprint_name")
        async with self._lock("blueprint", ws, name):
            if await self._cfg(self._config.get(ws, BLUEPRINT, name)) is None:
                raise RequestError("not-found", f"no blueprint {name!r} in workspace {ws!r}")
            flows = await self._cfg(self._config.values(ws, FLOW))
            users = sorted(fid for fid, text in flows.items()
                           if _record(text).get("blueprint-name") == name)
            if users:
                raise RequestError(
                    "in-use", f"blueprint {name!r} is used by flow(s) {', '.join(users)}; stop them first"
                )
            await self._cfg(self._config.delete(ws, BLUEPRINT, name))
        return FlowResponse()

    # -- flows ----------------------------------------------------------------

    async def op_list_flows(self, r: FlowRequest) -> FlowResponse:
        ws = require(r.workspace, "workspace")
        return FlowResponse(flow_ids=await self._cfg(self._config.keys(ws, FLOW)))

    async def op_get_flow(self, r: FlowRequest) -> FlowResponse:
        ws, fid = require(r.workspace, "workspace"), require(r.flow_id, "flow_id")
        text = await self._cfg(self._config.get(ws, FLOW, fid))
        if text is None:
            raise RequestError("not-found", f"no flow {fid!r} in workspace {ws!r}")
        record = _record(text)
        return FlowResponse(
            flow=text,
            description=record.get("description"),
            parameters={str(k): str(v) for k, v in record.get("parameters", {}).items()},
        )

    async def _live_flows(self, *, exclude: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        """The records of every running flow in every workspace (``_ws`` added)."""
        by_ws = await self._cfg(self._config.values_all_workspaces(FLOW))
        out = []
        for ws, flows in by_ws.items():
            for fid, text in flows.items():
                if (ws, fid) == exclude:
                    continue
                record = _record(text)
                record["_ws"] = ws
                out.append(record)
        return out

    async def op_start_flow(self, r: FlowRequest) -> FlowResponse:
        ws = require(r.workspace, "workspace")
        fid = require(r.flow_id, "flow_id")
        name = require(r.blueprint_name, "blueprint_name")
        with self._settled_later(ws, fid):
            await self._start_flow(r, ws, fid, name)
        return FlowResponse()

    async def _start_flow(self, r: FlowRequest, ws: str, fid: str, name: str) -> None:
        if is_reserved(ws):
            raise RequestError(
                "bad-request", f"workspace {ws!r} is reserved: flows run in ordinary workspaces"
            )
        try:
            check_name(fid, "flow id")
            check_name(ws, "workspace")
        except BlueprintError as exc:
            raise RequestError("bad-request", str(exc)) from None
        async with self._lock("blueprint", ws, name), self._lock("flow", ws, fid):
            await self._pending_start(ws, fid)
            if await self._cfg(self._config.get(ws, FLOW, fid)) is not None:
                raise RequestError("exists", f"flow {fid!r} already exists in workspace {ws!r}")
            if await self._cfg(self._config.get(SYSTEM, STOPPING_TYPE, stopping_key(ws, fid))):
                raise RequestError(
                    "exists", f"flow {fid!r} in workspace {ws!r} is still being stopped; try again"
                )
            blueprint = await self._blueprint(ws, name)
            types = {
                k: v for k, v in (
                    (k, _loads(t, f"parameter-type {k!r}"))
                    for k, t in (await self._cfg(self._config.values(ws, PARAMETER_TYPE))).items()
                ) if isinstance(v, dict)
            }
            try:
                validate_blueprint(blueprint)
                params = resolve_parameters(blueprint, dict(r.parameters or {}), types)
                plan = instantiate(
                    blueprint, workspace=ws, flow_id=fid, blueprint_name=name, parameters=params
                )
            except BlueprintError as exc:
                raise RequestError("bad-request", f"flow {fid!r}: {exc}") from None
            entries = {(processor_type(p), v): json.dumps(body, sort_keys=True)
                       for (p, v), body in plan.processors.items()}
            existing = await self._cfg(self._config.get_many(ws, entries))
            for key, text in existing.items():
                if text != entries[key]:
                    raise RequestError(
                        "conflict",
                        f"processor entry {key[0]}/{key[1]} already exists with another "
                        "definition (a flow of another blueprint uses that variant)",
                    )
            record = {
                "description": r.description or "",
                "blueprint-name": name,
                "interfaces": plan.interfaces,
                "parameters": plan.parameters,
                "processors": sorted([p, v] for p, v in plan.processors),
                "queues": sorted([t, s] for t, s in plan.queues),
                "topics": sorted(plan.topics),
                "status": RUNNING,
            }
            intent = stopping_key(ws, fid)
            # The intent first: a crash after the queues are made but before the
            # flow is written leaves a record that says which queues to take back.
            await self._cfg(self._config.put(SYSTEM, STARTING_TYPE, intent,
                                             json.dumps(record, sort_keys=True)))
            try:
                await self._ensure_queues(sorted(plan.queues))
                await self._cfg(self._config.write(
                    [(ws, t, k, v) for (t, k), v in entries.items()]
                    + [(ws, FLOW, fid, json.dumps(record, sort_keys=True))],
                    [(SYSTEM, STARTING_TYPE, intent)],
                ))
            except (RequestError, PubSubError):
                # A write whose answer was lost may have landed: only the store can tell.
                if not await self._settle_start(ws, fid, record):
                    raise
        log.info("flow %s/%s started from %s: %d processors, %d queues",
                 ws, fid, name, len(plan.processors), len(plan.queues))

    @contextlib.contextmanager
    def _settled_later(self, ws: str, fid: str) -> Iterator[None]:
        """If the operation fails as ``unavailable``, a start or stop of this flow may
        be left filed: settle it in the background, so the state converges even if
        nobody asks again."""
        try:
            yield
        except (RequestError, PubSubError) as exc:
            if not isinstance(exc, RequestError) or exc.type == "unavailable":
                self._settle_later(ws, fid)
            raise

    def _settle_later(self, ws: str, fid: str) -> None:
        if (ws, fid) not in self._settling:
            task = asyncio.create_task(self._settle_until_done(ws, fid))
            self._settling[(ws, fid)] = task
            task.add_done_callback(lambda _: self._settling.pop((ws, fid), None))

    async def _settle_until_done(self, ws: str, fid: str) -> None:
        """Settle the flow's filed start and finish its filed stop, retrying with
        backoff (1 s, doubling to 30 s) until both are done."""
        backoff = Backoff(base=1.0, cap=30.0)
        while True:
            await backoff.sleep()
            try:
                async with self._lock("flow", ws, fid):
                    await self._pending_start(ws, fid)
                    text = await self._cfg(self._config.get(SYSTEM, STOPPING_TYPE, stopping_key(ws, fid)))
                    if text is not None:
                        log.info("retrying the stop of flow %s/%s", ws, fid)
                        await self._finish_stop(ws, fid, _record(text))
                return
            except (RequestError, PubSubError) as exc:
                log.warning("flow %s/%s is still not settled: %s; retrying", ws, fid, exc)

    async def _settle_start(self, ws: str, fid: str, record: dict[str, Any]) -> bool:
        """Resolve a start whose intent record is filed: True if the flow was written
        (the start happened), False if it was not (its queues are taken back).

        Retried with backoff for ``--config-timeout``; if the config service stays
        unreachable the intent record stays, for the next operation on this flow
        or the next start-up, and the error is raised."""
        key = stopping_key(ws, fid)
        backoff = Backoff(base=0.2, cap=2.0)
        deadline = time.monotonic() + self.config_timeout
        while True:
            try:
                if await self._config.get(ws, FLOW, fid) is not None:
                    await self._config.delete(SYSTEM, STARTING_TYPE, key)
                    return True
                await self._undo([(q[0], q[1]) for q in record.get("queues", [])],
                                 await self._live_flows(), exclude=(ws, fid))
                await self._config.delete(SYSTEM, STARTING_TYPE, key)
                return False
            except (PubSubError, RequestError) as exc:
                if isinstance(exc, RequestError) and exc.type != "unavailable":
                    raise
                if time.monotonic() > deadline:
                    raise RequestError(
                        "unavailable", f"the config service: {exc}; the start of flow {fid!r} "
                        "is undone by the next operation on it or the next start-up"
                    ) from exc
                await backoff.sleep()

    async def _starting(self, exclude: tuple[str, str]) -> list[dict[str, Any]]:
        """The intent records of the other flows being started: their queues are
        about to be named by a flow, so neither an undo nor a stop may delete them."""
        texts = await self._cfg(self._config.values(SYSTEM, STARTING_TYPE))
        return [_record(t) for k, t in texts.items() if k != stopping_key(*exclude)]

    async def _pending_start(self, ws: str, fid: str) -> None:
        """Settle the intent record a crashed or failed start left for this flow."""
        text = await self._cfg(self._config.get(SYSTEM, STARTING_TYPE, stopping_key(ws, fid)))
        if text is not None:
            log.info("settling the start of flow %s/%s left unfinished", ws, fid)
            await self._settle_start(ws, fid, _record(text))

    async def _ensure_queues(self, queues: list[Queue]) -> None:
        """Ensure every queue, or raise.  Nothing is undone here: a start takes its
        queues back through its intent record (``_settle_start``), and the start-up
        pass retries the queues of running flows, which must not be deleted."""

        async def one(q: Queue) -> None:
            async with self._queue_slots:
                await self.backend.ensure_queue(*q)

        results = await asyncio.gather(*(one(q) for q in queues), return_exceptions=True)
        failures = [(q, r) for q, r in zip(queues, results, strict=True) if isinstance(r, BaseException)]
        if failures:
            q, exc = failures[0]
            raise RequestError(
                "unavailable", f"cannot create queue {q[1]!r} on {q[0]}: {type(exc).__name__}: {exc}"
            )

    async def _undo(self, made: list[Queue], others: list[dict[str, Any]],
                    exclude: tuple[str, str]) -> None:
        """Delete ``made`` but the queues a live flow (``others``), or another flow
        being started (its intent record; ``exclude`` is this one's), names."""
        keep = _owned(others + await self._starting(exclude), "queues")
        for q in made:
            if q in keep:
                continue
            try:
                await self.backend.delete_queue(*q)
            except Exception as exc:
                log.error("undo: could not delete queue %r on %s: %s", q[1], q[0], exc)

    async def op_stop_flow(self, r: FlowRequest) -> FlowResponse:
        ws, fid = require(r.workspace, "workspace"), require(r.flow_id, "flow_id")
        with self._settled_later(ws, fid):
            await self._stop_flow(ws, fid)
        return FlowResponse()

    async def _stop_flow(self, ws: str, fid: str) -> None:
        async with self._lock("flow", ws, fid):
            await self._pending_start(ws, fid)
            text = await self._cfg(self._config.get(ws, FLOW, fid))
            if text is None:
                text = await self._cfg(self._config.get(SYSTEM, STOPPING_TYPE, stopping_key(ws, fid)))
                if text is None:
                    raise RequestError("not-found", f"no flow {fid!r} in workspace {ws!r}")
                await self._finish_stop(ws, fid, _record(text))  # a stop left half-done
            else:
                await self._stop(ws, fid, _record(text))

    async def _stop(self, ws: str, fid: str, record: dict[str, Any]) -> None:
        """Phase 1 (one write, one push), then the rest."""
        others = await self._live_flows(exclude=(ws, fid))
        shared = {tuple(p) for o in others if o["_ws"] == ws for p in o.get("processors", [])}
        entries = [(ws, processor_type(p), v) for p, v in record.get("processors", [])
                   if (p, v) not in shared]
        record["status"] = STOPPING
        await self._cfg(self._config.write(
            [(SYSTEM, STOPPING_TYPE, stopping_key(ws, fid), json.dumps(record, sort_keys=True))],
            [(ws, FLOW, fid), *entries],
        ))
        await self._finish_stop(ws, fid, record, others)

    async def _finish_stop(
        self, ws: str, fid: str, record: dict[str, Any], others: list[dict[str, Any]] | None = None
    ) -> None:
        """Phases 2 and 3: wait for processors to let go, delete queues, forget the stop."""
        if others is None:
            others = await self._live_flows()
        await asyncio.sleep(self.release_wait)
        await self._delete_queues(record, others)
        await self._cfg(self._config.delete(SYSTEM, STOPPING_TYPE, stopping_key(ws, fid)))
        log.info("flow %s/%s stopped", ws, fid)

    async def _delete_queues(self, record: dict[str, Any], others: list[dict[str, Any]]) -> None:
        keep_queues = _owned(others + await self._starting(("", "")), "queues")
        keep_topics = {t for o in others for t in o.get("topics", [])}
        queues = [q for q in (tuple(q) for q in record.get("queues", [])) if q not in keep_queues]
        topics = [t for t in record.get("topics", []) if t not in keep_topics]
        deadline = time.monotonic() + self.release_timeout
        backoff = Backoff(base=0.5, cap=5.0)
        pending: list[Queue] = [(q[0], q[1]) for q in queues]
        while True:
            failed: list[tuple[Queue, BaseException]] = []
            for q in pending:
                try:
                    await self.backend.delete_queue(*q)
                except Exception as exc:
                    failed.append((q, exc))
            if not failed:
                back = await self._recreated(pending)
                if not back:
                    break
                log.warning("%d queue(s) were re-created by a consumer still attached; deleting again",
                            len(back))
                pending = back
            else:
                pending = [q for q, _ in failed]
            if time.monotonic() > deadline:
                q, why = failed[0] if failed else (pending[0], None)
                raise RequestError(
                    "unavailable",
                    f"could not delete queue {q[1]!r} on {q[0]} within {self.release_timeout}s"
                    + (f": {type(why).__name__}: {why}" if why else " (it keeps coming back)")
                    + "; the flow stays 'stopping', stop it again to retry",
                )
            await backoff.sleep()
        if self.backend.capabilities.queue_lifecycle:
            until = time.monotonic() + TOMBSTONE_SECONDS
            self._tombstones.update((q, until) for q in queues)
        for t in topics:
            try:
                await self.backend.delete_queue(t, None)
            except Exception as exc:
                raise RequestError(
                    "unavailable", f"could not delete topic {t}: {type(exc).__name__}: {exc}; "
                    "the flow stays 'stopping', stop it again to retry"
                ) from exc

    async def _recreated(self, queues: Iterable[Queue]) -> list[Queue]:
        """The deleted queues that exist again a moment later (where the backend can tell)."""
        queues = list(queues)
        if not queues or not self.backend.capabilities.queue_lifecycle:
            return []
        await asyncio.sleep(min(0.5, self.release_wait or 0.5))
        back = []
        for q in queues:
            with contextlib.suppress(UnsupportedError):
                if await self.backend.queue_exists(*q):
                    back.append(q)
        return back

    # -- start-up -------------------------------------------------------------

    async def _recover(self) -> None:
        """Settle starts and finish stops left half-done, ensure the queues of running
        flows (retrying what fails with backoff until it succeeds); then idle."""
        backoff = Backoff(base=0.5, cap=30.0)
        todo: dict[tuple[str, str, str], dict[str, Any]] | None = None
        while todo is None or todo:
            try:
                if todo is None:
                    await self._config.wait_until_up(self.config_timeout)
                    by_ws = await self._config.values_all_workspaces(FLOW)
                    todo = {(ws, fid, RUNNING): _record(text)
                            for ws, flows in by_ws.items() for fid, text in flows.items()}
                    for kind in (STARTING_TYPE, STOPPING_TYPE):
                        for key, text in (await self._config.values(SYSTEM, kind)).items():
                            ws, _, fid = key.partition(":")
                            todo[(ws, fid, kind)] = _record(text)
                for (ws, fid, kind), record in sorted(todo.items()):
                    async with self._lock("flow", ws, fid):
                        if kind == STARTING_TYPE:
                            await self._pending_start(ws, fid)
                        elif kind == STOPPING_TYPE:
                            # a stop-flow request may have finished it meanwhile
                            key = stopping_key(ws, fid)
                            if await self._config.get(SYSTEM, STOPPING_TYPE, key) is not None:
                                log.info("resuming the stop of flow %s/%s", ws, fid)
                                await self._finish_stop(ws, fid, record)
                        else:
                            # Operations run meanwhile: a flow stopped since the list
                            # was read must not get its queues back.
                            now = await self._config.get(ws, FLOW, fid)
                            if now is not None:
                                await self._ensure_queues(
                                    [(q[0], q[1]) for q in _record(now).get("queues", [])]
                                )
                    del todo[(ws, fid, kind)]
                    backoff.reset()
            except (RequestError, PubSubError) as exc:
                log.warning("start-up recovery: %s; retrying", exc)
                await backoff.sleep()
        self.recovered.set()
        while not self._stopping:  # supervised: stay until the service stops
            await asyncio.sleep(self.sweep_interval)
            await self._sweep()

    async def _sweep(self) -> None:
        """Settle every filed start and stop in the background.

        A write can be applied late: a request a killed service sent waits in
        the config service's queue and may land after the operation was done
        again, filing an intent (or a stop) that nobody is working on.  Each
        one is settled under its flow's lock, so a start or stop in progress is
        waited for, not disturbed."""
        try:
            for kind in (STARTING_TYPE, STOPPING_TYPE):
                for key in await self._config.keys(SYSTEM, kind):
                    ws, _, fid = key.partition(":")
                    self._settle_later(ws, fid)
            await self._reap()
        except (PubSubError, RequestError) as exc:
            log.warning("sweep: %s; again in %gs", exc, self.sweep_interval)

    async def _reap(self) -> None:
        """Delete again the queues a stop deleted that a straggling consumer made
        again since (one still joining when the flow stopped: a Kafka group join
        takes seconds), unless a flow or a start names them now."""
        now = time.monotonic()
        for q, until in list(self._tombstones.items()):
            if until < now:
                del self._tombstones[q]
        if not self._tombstones:
            return
        owned = _owned(await self._live_flows() + await self._starting(("", "")), "queues")
        for q in list(self._tombstones):
            if q in owned:
                del self._tombstones[q]
            elif await self.backend.queue_exists(*q):
                log.warning("queue %r on %s came back after its flow stopped; deleting it again",
                            q[1], q[0])
                try:
                    await self.backend.delete_queue(*q)
                except PubSubError as exc:  # kept in the tombstones: the next sweep tries again
                    log.warning("could not delete queue %r on %s again: %s", q[1], q[0], exc)


def _record(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _owned(records: Iterable[dict[str, Any]], field: str) -> set[Queue]:
    return {(q[0], q[1]) for r in records for q in r.get(field, [])}


def main() -> None:
    FlowService.launch("flow-svc", __doc__ or "")


if __name__ == "__main__":
    main()

