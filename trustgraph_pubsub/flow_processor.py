"""``FlowProcessor``: a processor that runs one set of consumers per flow.

The flow service writes one config entry per processor and flow variant:
type ``processor:<name>``, key ``<variant>`` (usually the flow id), value
``{"topics": {spec: topic}, "parameters": {name: value}}``.  A
``FlowProcessor`` whose ``--id`` is ``<name>`` watches that one type (and
nothing else) with a ``ConfigReceiver``, in every workspace, and keeps a
running ``Flow`` per entry:

* an entry that appears starts a flow: its producers first (so a handler
  can send from its first message), then its consumers;
* an entry that goes away stops the flow: consumers first (in-flight
  handlers finish and are acknowledged), then producers;
* an entry whose definition changed (compared by content, not by key:
  CONTROL_PLANE.md hazard 3) restarts the flow with the new definition.

The work is level-triggered, as a Kubernetes controller's: config handlers
only record the desired entries and wake one reconcile task, which compares
desired with running.  A flow that fails to start (a broker that is down, a
blueprint that lacks a topic a spec needs) is logged and retried with
backoff; it does not hold up the others.

What a processor does per flow is declared with specs:

* ``ConsumerSpec(name, schema, handler)``: consume the flow's topic ``name``
  with ``handler(flow, message)`` (ack on return, nack on raise, as
  ``Consumer``);
* ``ProducerSpec(name, schema)``: ``flow.producer(name)`` (or ``flow(name)``)
  sends to the flow's topic ``name``;
* ``ResponderSpec(request, response, request_schema, response_schema,
  handler)``: answer requests on topic ``request`` with
  ``handler(flow, request, properties)`` on topic ``response``, correlated as
  ``Responder`` does (so ``RequestResponse`` can call it).

Consumers of every flow use the subscription ``<id>``, the one the flow
service made the queue for, so replicas of a processor share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .backend import Message
from .config_client import ConfigClient
from .config_receiver import ConfigReceiver
from .consumer import Consumer
from .errors import ConfigurationError
from .processor import AsyncProcessor
from .producer import Producer
from .request_response import Responder
from .retry import Backoff

log = logging.getLogger(__name__)

__all__ = ["ConsumerSpec", "Flow", "FlowProcessor", "ProducerSpec", "ResponderSpec"]

FlowKey = tuple[str, str]  # (workspace, variant)


@dataclass(frozen=True)
class ConsumerSpec:
    """Consume the flow's topic ``name`` with ``handler(flow, message)``."""

    name: str
    schema: type[Any] | None
    handler: Callable[[Flow, Message], Awaitable[None]]
    concurrency: int | None = None


@dataclass(frozen=True)
class ProducerSpec:
    """Send to the flow's topic ``name`` with ``flow.producer(name)``."""

    name: str
    schema: type[Any] | None


@dataclass(frozen=True)
class ResponderSpec:
    """Answer the flow's ``request`` topic on its ``response`` topic."""

    request: str
    response: str
    request_schema: type[Any]
    response_schema: type[Any]
    handler: Callable[[Flow, Any, dict[str, str]], Any]
    concurrency: int | None = None


Spec = ConsumerSpec | ProducerSpec | ResponderSpec


class Flow:
    """One flow's consumers and producers inside a ``FlowProcessor``."""

    def __init__(
        self, processor: FlowProcessor, workspace: str, key: str, definition: dict[str, Any]
    ) -> None:
        self.processor = processor
        self.workspace = workspace
        #: the entry's key: the flow's variant, usually its id
        self.id = key
        self.definition = definition
        topics = definition.get("topics", {})
        params = definition.get("parameters", {})
        if not isinstance(topics, dict) or not isinstance(params, dict):
            raise ConfigurationError(
                f"processor entry {workspace}/{key}: topics and parameters must be objects"
            )
        self.topics: dict[str, str] = {str(k): str(v) for k, v in topics.items()}
        self.parameters: dict[str, Any] = dict(params)
        self._producers: dict[str, Producer] = {}
        self._runners: list[Consumer | Responder] = []

    def topic(self, name: str) -> str:
        try:
            return self.topics[name]
        except KeyError:
            raise ConfigurationError(
                f"flow {self.workspace}/{self.id} of processor {self.processor.id!r} has no topic "
                f"{name!r} (its topics: {', '.join(sorted(self.topics)) or 'none'}); fix the blueprint"
            ) from None

    def producer(self, name: str) -> Producer:
        """The producer of ``ProducerSpec(name)``."""
        try:
            return self._producers[name]
        except KeyError:
            raise ConfigurationError(f"processor {self.processor.id!r} has no ProducerSpec {name!r}") from None

    __call__ = producer

    def parameter(self, name: str, default: Any = None) -> Any:
        return self.parameters.get(name, default)

    async def start(self) -> None:
        p = self.processor
        try:
            for spec in p.specs:
                if isinstance(spec, ProducerSpec):
                    prod = Producer(p.backend, self.topic(spec.name), spec.schema, metrics=p.metrics)
                    await prod.start()
                    self._producers[spec.name] = prod
            for spec in p.specs:
                runner: Consumer | Responder
                if isinstance(spec, ConsumerSpec):
                    handler = spec.handler
                    runner = Consumer(
                        p.backend, self.topic(spec.name), p.id, spec.schema,
                        lambda msg, h=handler: h(self, msg),  # type: ignore[misc]
                        concurrency=spec.concurrency or p.concurrency, metrics=p.metrics,
                    )
                elif isinstance(spec, ResponderSpec):
                    rhandler = spec.handler
                    runner = Responder(
                        p.backend, self.topic(spec.request), spec.request_schema,
                        self.topic(spec.response), spec.response_schema,
                        lambda req, props, h=rhandler: h(self, req, props),  # type: ignore[misc]
                        subscription=p.id, concurrency=spec.concurrency or p.concurrency,
                        metrics=p.metrics,
                    )
                else:
                    continue
                await runner.start()
                self._runners.append(runner)
        except BaseException:
            await self.stop()
            raise

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Consumers first (draining, for at most ``drain_timeout`` seconds if given),
        then producers.  Errors are logged, not raised."""
        runners, self._runners = self._runners, []
        for r in await asyncio.gather(*(x.stop(drain_timeout) for x in runners),
                                      return_exceptions=True):
            if isinstance(r, BaseException):
                log.warning("flow %s/%s: stopping a consumer: %s", self.workspace, self.id, r)
        producers, self._producers = self._producers, {}
        for r in await asyncio.gather(*(x.close() for x in producers.values()), return_exceptions=True):
            if isinstance(r, BaseException):
                log.warning("flow %s/%s: closing a producer: %s", self.workspace, self.id, r)

    def __repr__(self) -> str:
        return f"<Flow {self.workspace}/{self.id} of {self.processor.id!r}>"


class FlowProcessor(AsyncProcessor):
    """Runs its specs once per flow named in config type ``processor:<id>``."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.specs: list[Spec] = []
        self.flows: dict[FlowKey, Flow] = {}
        self._desired: dict[FlowKey, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self.config: ConfigClient | None = None
        self.receiver: ConfigReceiver | None = None
        self.resync_interval = float(params.get("resync_interval") or 300.0)

    @property
    def config_type(self) -> str:
        return f"processor:{self.id}"

    def register(self, spec: Spec) -> None:
        """Add a spec; call before ``start``."""
        if self._started:
            raise ConfigurationError("register specs before the processor starts")
        self.specs.append(spec)

    async def on_start(self) -> None:
        self.config = ConfigClient(self.backend, metrics=self.metrics)
        self.receiver = ConfigReceiver(
            self.backend, client=self.config, name=self.id,
            resync_interval=self.resync_interval, metrics=self.metrics,
        )
        self.receiver.on(self.config_type, self._on_config)
        await self.config.start()
        await self.receiver.start()
        self.supervise("flows", self._reconcile_loop)

    async def on_stop(self) -> None:
        if self.receiver is not None:
            await self.receiver.stop()
        flows, self.flows = list(self.flows.values()), {}
        await asyncio.gather(*(f.stop(self.drain_timeout) for f in flows))
        if self.config is not None:
            await self.config.stop()

    def _on_config(self, workspace: str, values: dict[str, str], version: int) -> None:
        """Record the desired entries of one workspace and wake the reconciler."""
        for key in [k for k in self._desired if k[0] == workspace and k[1] not in values]:
            del self._desired[key]
        for variant, text in values.items():
            try:
                definition = json.loads(text)
                if not isinstance(definition, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                log.error("%s: entry %s/%s is not a JSON object (%s); ignored",
                          self.config_type, workspace, variant, exc)
                self._desired.pop((workspace, variant), None)
                continue
            self._desired[(workspace, variant)] = definition
        self._wake.set()

    async def _reconcile_loop(self) -> None:
        backoff = Backoff(base=1.0, cap=60.0)
        while not self._stopping:  # (a lost cancellation ends it too)
            await self._wake.wait()
            self._wake.clear()
            if await self.reconcile():
                backoff.reset()
                continue
            # Some flow failed to start: try again later, or sooner on a change.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff.next_delay()):
                    await self._wake.wait()
            self._wake.set()

    async def reconcile(self) -> bool:
        """Make running flows match the desired entries; whether every flow started."""
        stop = [k for k, f in self.flows.items()
                if self._desired.get(k) != f.definition]
        if stop:
            await asyncio.gather(*(self._stop_flow(k) for k in stop))
        start = [k for k in self._desired if k not in self.flows]
        results = await asyncio.gather(*(self._start_flow(k, self._desired[k]) for k in start))
        return all(results)

    async def _stop_flow(self, key: FlowKey) -> None:
        flow = self.flows.pop(key)
        await flow.stop()
        log.info("%s: flow %s/%s stopped", self.id, *key)

    async def _start_flow(self, key: FlowKey, definition: dict[str, Any]) -> bool:
        try:
            flow = Flow(self, key[0], key[1], definition)
            await flow.start()
        except Exception as exc:
            log.error("%s: flow %s/%s could not start: %s: %s; will retry",
                      self.id, key[0], key[1], type(exc).__name__, exc)
            return False
        if self._desired.get(key) != definition or self._stopping:
            await flow.stop()  # changed or removed while starting: the next pass redoes it
            self._wake.set()
            return True
        self.flows[key] = flow
        log.info("%s: flow %s/%s started", self.id, *key)
        return True
