"""Fuzz the config and flow services' request queues (hypothesis, in-process memory backend).

Random operations with random fields, and random bytes that are no request at
all: every request gets an answer (a result or an ``Error`` answer, never
silence, a crash or an exception out of the service), and after the storm a
well-formed request is still served.  ``TG_FUZZ_EXAMPLES`` sets the cases per
test (default 1,000).

Hypothesis drives a synchronous test; the services live on one event loop for
the whole module, and each case runs its request on that loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bootstrap.config_service import ConfigService, SqliteStore
from bootstrap.flow_service import FlowService
from trustgraph_pubsub import RequestResponse
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub
from trustgraph_schema import (
    ConfigKey,
    ConfigRequest,
    ConfigResponse,
    ConfigValue,
    FlowRequest,
    FlowResponse,
    codec,
    config_request_queue,
    config_response_queue,
    flow_request_queue,
    flow_response_queue,
)

EXAMPLES = int(os.environ.get("TG_FUZZ_EXAMPLES", "1000"))
ANSWER_WITHIN = 10.0

CONFIG_OPS = ["get", "list", "getvalues", "getvalues-all-ws", "getkeys-all-ws", "config", "put",
              "delete"]
FLOW_OPS = ["list-blueprints", "get-blueprint", "put-blueprint", "delete-blueprint", "list-flows",
            "get-flow", "start-flow", "stop-flow"]

# Names as users and attackers write them: empty, reserved, odd characters, long.
names = st.one_of(
    st.sampled_from(["", "w", "default", "__system__", "__workspaces__", "..", "a/b", "flow",
                     "processor:chunker", "{id}", "x" * 300]),
    st.text(max_size=40),
)
maybe_names = st.one_of(st.none(), names)
json_texts = st.one_of(
    st.sampled_from(["{}", "[]", "null", '"s"', "1e999", '{"flow": {}}', "not json", "{", ""]),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
                 lambda kids: st.one_of(st.lists(kids, max_size=3),
                                        st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                 max_leaves=8).map(json.dumps),
)
config_requests = st.builds(
    ConfigRequest,
    operation=st.one_of(st.sampled_from(CONFIG_OPS), names),
    workspace=maybe_names,
    keys=st.one_of(st.none(), st.lists(st.builds(ConfigKey, type=names, key=names,
                                                 workspace=maybe_names), max_size=4)),
    type=maybe_names,
    values=st.one_of(st.none(), st.lists(st.builds(ConfigValue, type=names, key=names,
                                                   value=json_texts, workspace=maybe_names),
                                         max_size=4)),
)


def blueprint_texts() -> st.SearchStrategy[str]:
    flows = st.dictionaries(names, st.fixed_dictionaries(
        {"topics": st.dictionaries(names, names, max_size=2)},
        optional={"parameters": st.dictionaries(names, names, max_size=2)}), max_size=3)
    documents = st.fixed_dictionaries(
        {}, optional={"description": names, "flow": flows,
                      "parameters": st.dictionaries(names, st.dictionaries(names, names, max_size=3),
                                                    max_size=2),
                      "interfaces": st.dictionaries(names, names, max_size=2)})
    return st.one_of(json_texts, documents.map(json.dumps))


flow_requests = st.builds(
    FlowRequest,
    operation=st.one_of(st.sampled_from(FLOW_OPS), names),
    workspace=maybe_names,
    blueprint_name=maybe_names,
    blueprint_definition=st.one_of(st.none(), blueprint_texts()),
    description=maybe_names,
    flow_id=maybe_names,
    parameters=st.one_of(st.none(), st.dictionaries(names, names, max_size=3)),
)
junk = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"{}", b"[]", b"null", b'{"operation": null}', b'{"operation": 7}',
                     b'{"operation": "put", "values": "x"}', b'{"operation": "get", "keys": [1]}',
                     b'{"operation": "start-flow", "parameters": []}', b"\xff" * 64]),
    json_texts.map(str.encode),
)


class Plane:
    """Config and flow services and two raw callers, on one loop for the whole module."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.hub = MemoryHub()
        self.tmp = tmp
        self.config: Any = None
        self.flow: Any = None
        self.config_rr: Any = None
        self.flow_rr: Any = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def start(self) -> None:
        b = MemoryBackend(self.hub)
        self.config = ConfigService(backend=b, store=SqliteStore(self.tmp / "config.db"))
        self.flow = FlowService(backend=b, release_wait=0.01, release_timeout=0.5)
        await self.config.start()
        await self.flow.start()
        self.config_rr = RequestResponse(b, config_request_queue, None, config_response_queue,
                                         ConfigResponse)
        self.flow_rr = RequestResponse(b, flow_request_queue, None, flow_response_queue,
                                       FlowResponse)
        await self.config_rr.start()
        await self.flow_rr.start()

    async def stop(self) -> None:
        for part in (self.config_rr, self.flow_rr, self.flow, self.config):
            if part is not None:
                await part.stop()

    def ask(self, rr: Any, request: Any) -> Any:
        """One request (a schema object or raw bytes); its answer.

        The callers are untyped on the request side, so junk bytes go out as
        they are; a schema object is encoded by the one codec first.  Silence
        fails the test with a timeout, as would an exception.
        """
        data = request if isinstance(request, bytes) else codec.encode(request)
        return self.run(rr.request(data, timeout=ANSWER_WITHIN))

    def still_serving(self) -> None:
        put = ConfigRequest("put", workspace="fuzz-ok",
                            values=[ConfigValue("t", "k", '"v"')])
        assert self.ask(self.config_rr, put).error is None
        got = self.ask(self.config_rr, ConfigRequest("get", workspace="fuzz-ok",
                                                     keys=[ConfigKey("t", "k")]))
        assert got.error is None and got.values[0].value == '"v"'
        listed = self.ask(self.flow_rr, FlowRequest("list-flows", workspace="fuzz-ok"))
        assert listed.error is None
        assert self.config.running and self.flow.running


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    p = Plane(tmp_path_factory.mktemp("fuzz"))
    p.run(p.start())
    try:
        yield p
    finally:
        p.run(p.stop())
        p.loop.close()


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def _answered(reply: Any) -> None:
    # A result or an Error answer; an Error names its type and says something.
    if reply.error is not None:
        assert reply.error.type and reply.error.message, reply.error


@FUZZ
@given(request=config_requests)
def test_config_service_answers_any_request(plane: Plane, request: ConfigRequest) -> None:
    _answered(plane.ask(plane.config_rr, request))


@FUZZ
@given(request=flow_requests)
def test_flow_service_answers_any_request(plane: Plane, request: FlowRequest) -> None:
    _answered(plane.ask(plane.flow_rr, request))


@FUZZ
@given(data=junk)
def test_bytes_that_are_no_request_get_an_error_answer(plane: Plane, data: bytes) -> None:
    for rr in (plane.config_rr, plane.flow_rr):
        reply = plane.ask(rr, data)
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        if not (isinstance(parsed, dict) and isinstance(parsed.get("operation"), str)):
            assert reply.error is not None and reply.error.type == "bad-request", (data, reply)


def test_services_still_serve_after_the_storm(plane: Plane) -> None:
    """Runs last in this module: whatever the fuzz cases did, both services still work."""
    plane.still_serving()
