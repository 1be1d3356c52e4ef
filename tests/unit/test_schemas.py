"""The shipped schemas: shapes, wire form, queue names and exports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

import pytest

import trustgraph_schema
from trustgraph_schema import (
    BLANK,
    CONTROL_NAMESPACE,
    IRI,
    LITERAL,
    TRIPLE,
    ConfigKey,
    ConfigPush,
    ConfigRequest,
    ConfigResponse,
    ConfigValue,
    DecodeError,
    Error,
    FlowRequest,
    FlowResponse,
    Metadata,
    Term,
    TextChunkRequest,
    TextChunkResponse,
    TextCompletionRequest,
    TextCompletionResponse,
    Triple,
    Triples,
    check_schema,
    config_push_queue,
    config_request_queue,
    config_response_queue,
    decode,
    encode,
    flow_request_queue,
    flow_response_queue,
    parse_topic,
    reference_decode,
)

SCHEMAS = [
    Error,
    Term,
    Triple,
    Metadata,
    Triples,
    ConfigKey,
    ConfigValue,
    ConfigRequest,
    ConfigResponse,
    ConfigPush,
    FlowRequest,
    FlowResponse,
    TextCompletionRequest,
    TextCompletionResponse,
    TextChunkRequest,
    TextChunkResponse,
]

ERROR = Error(type="not-found", message="no such key")

EXAMPLES: list[Any] = [
    ERROR,
    Term(IRI, iri="http://example.org/a"),
    Term(BLANK, value="b0"),
    Term(LITERAL, value="chat", language="fr"),
    Term(LITERAL, value="42", datatype="http://www.w3.org/2001/XMLSchema#integer"),
    Triple(Term(IRI, iri="http://s"), Term(IRI, iri="http://p"), g="http://graph"),
    Metadata(id="doc", workspace="w", user="u", collection="c", metadata=[]),
    Triples(
        metadata=Metadata(id="doc"),
        triples=[
            Triple(
                Term(
                    TRIPLE,
                    triple=Triple(
                        Term(IRI, iri="http://a"),
                        Term(IRI, iri="http://b"),
                        Term(LITERAL, value="c"),
                    ),
                ),
                Term(IRI, iri="http://says"),
                Term(LITERAL, value="yes"),
            )
        ],
    ),
    ConfigKey(type="prompt", key="system"),
    ConfigValue(type="prompt", key="system", value="You are helpful."),
    ConfigRequest(operation="get", workspace="w", keys=[ConfigKey("prompt", "system")]),
    ConfigRequest(operation="put", workspace="w", values=[ConfigValue("t", "k", "v")]),
    ConfigResponse(
        version=3,
        values=[ConfigValue("t", "k", "v")],
        directory=["k1", "k2"],
        config={"prompt": {"system": "x"}, "empty": {}},
    ),
    ConfigResponse(error=ERROR),
    ConfigPush(version=7, changes={"prompt": ["w"], "flow": []}, previous=5),
    ConfigKey(type="t", key="k", workspace="w"),
    ConfigValue(type="prompt", key="system", value="x", workspace="w"),
    FlowRequest(
        operation="start-flow",
        workspace="w",
        blueprint_name="default",
        blueprint_definition="{}",
        description="d",
        flow_id="f1",
        parameters={"model": "m"},
    ),
    FlowResponse(blueprint_names=["a"], flow_ids=["f1"], flow="{}", description="d", parameters={}),
    FlowResponse(error=ERROR),
    TextCompletionRequest(system="", prompt="Hi", streaming=True, model="m", temperature=0.2),
    TextCompletionResponse(
        response="Hello", in_token=3, out_token=1, model="m", end_of_stream=True
    ),
    TextCompletionResponse(error=ERROR, end_of_stream=True),
    TextChunkRequest(text="abc", chunk_size=2),
    TextChunkResponse(chunks=["ab", "c"]),
    TextChunkResponse(error=ERROR),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_examples_round_trip_with_no_null(msg: Any) -> None:
    data = encode(msg)
    assert b"null" not in data
    assert decode(type(msg), data) == msg
    assert reference_decode(type(msg), data) == msg


@pytest.mark.parametrize("cls", SCHEMAS, ids=lambda c: c.__name__)
def test_every_schema_is_a_compiled_dataclass(cls: type[Any]) -> None:
    assert dataclasses.is_dataclass(cls)
    check_schema(cls)
    from trustgraph_schema import codec

    plan = codec._plan(cls)
    assert plan.encode_fallback is None and plan.decode_fallback is None, cls
    # only ``operation``-like fields are required; everything T | None is optional
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert "None" not in str(f.type), (
                f"{cls.__name__}.{f.name} is optional but has no default"
            )


def test_the_documented_one_liner() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from trustgraph_schema import ConfigRequest, encode; "
            "print(encode(ConfigRequest(operation='get', workspace='w')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == """b'{"operation":"get","workspace":"w"}'"""


def test_requests_carry_only_what_they_set() -> None:
    assert json.loads(encode(ConfigRequest(operation="list", workspace="w", type="prompt"))) == {
        "operation": "list",
        "workspace": "w",
        "type": "prompt",
    }
    assert json.loads(encode(FlowRequest(operation="list-flows"))) == {"operation": "list-flows"}
    assert json.loads(encode(ConfigResponse())) == {}


def test_defaults_with_values_are_written() -> None:
    assert json.loads(encode(TextCompletionRequest(system="", prompt="p"))) == {
        "system": "",
        "prompt": "p",
        "streaming": False,
    }
    assert json.loads(encode(TextCompletionResponse(response="r"))) == {
        "response": "r",
        "end_of_stream": False,
    }
    assert json.loads(encode(ConfigPush(version=0))) == {"version": 0, "changes": {}, "previous": 0}


def test_required_fields_are_required_on_the_wire() -> None:
    for cls, body, path in (
        (ConfigRequest, b'{"workspace":"w"}', "operation"),
        (FlowRequest, b"{}", "operation"),
        (ConfigPush, b'{"changes":{}}', "version"),
        (TextCompletionRequest, b'{"system":""}', "prompt"),
        (Triple, b'{"s":{"type":"i"}}', "p"),
        (Term, b'{"iri":"x"}', "type"),
        (ConfigResponse, b'{"error":{"type":"x"}}', "error.message"),
        (Triples, b'{"triples":[{"s":{"type":"i"},"p":{}}]}', "triples[0].p.type"),
    ):
        with pytest.raises(DecodeError) as err:
            decode(cls, body)
        assert err.value.path == path


def test_queue_names() -> None:
    queues = {
        config_request_queue: "config-request",
        config_response_queue: "config-response",
        config_push_queue: "config-push",
        flow_request_queue: "flow-request",
        flow_response_queue: "flow-response",
    }
    assert len(set(queues)) == 5
    for name, queue in queues.items():
        t = parse_topic(name)
        assert (t.qos, t.tenant, t.namespace, t.queue) == ("q1", "tg", CONTROL_NAMESPACE, queue)
    assert CONTROL_NAMESPACE != "flow"  # apart from the per-flow queues


def test_everything_is_exported_from_the_package() -> None:
    for name in trustgraph_schema.__all__:
        assert getattr(trustgraph_schema, name) is not None
    for cls in SCHEMAS:
        assert getattr(trustgraph_schema, cls.__name__) is cls
    # the exports the package had before the schemas existed are still there
    for name in (
        "QOS_LEVELS",
        "Topic",
        "TopicError",
        "SchemaError",
        "DecodeError",
        "parse_topic",
        "topic",
    ):
        assert name in trustgraph_schema.__all__


def test_term_type_constants_are_distinct() -> None:
    assert len({IRI, BLANK, LITERAL, TRIPLE}) == 4
