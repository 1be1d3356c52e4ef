"""Generic topic names: building, parsing, and errors that name the bad part."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustgraph_schema import QOS_LEVELS, Topic, TopicError, parse_topic, topic
from trustgraph_schema.errors import SchemaError


def test_defaults_and_every_part() -> None:
    assert topic("config-request") == "q1/tg/flow/config-request"
    assert topic("x", qos="q0", tenant="acme", namespace="ns") == "q0/acme/ns/x"
    for qos in QOS_LEVELS:
        assert topic("q", qos=qos).startswith(f"{qos}/")


@pytest.mark.parametrize(
    "name",
    ["q0/tg/flow/a", "q1/Tenant_1/name-space/queue.name", "q2/a/b/c.d-e_f", "q1/0/1/2"],
)
def test_valid_names_round_trip(name: str) -> None:
    parsed = parse_topic(name)
    assert str(parsed) == name
    assert parse_topic(parsed) is parsed  # a Topic passes through
    assert topic(parsed.queue, parsed.qos, parsed.tenant, parsed.namespace) == name


def test_topic_fields_identity_and_with_queue() -> None:
    t = parse_topic("q2/acme/control/orders")
    assert (t.qos, t.tenant, t.namespace, t.queue) == ("q2", "acme", "control", "orders")
    assert t.identity == "acme/control/orders"
    assert parse_topic("q0/acme/control/orders").identity == t.identity
    assert str(t.with_queue("refunds")) == "q2/acme/control/refunds"
    assert t == Topic("q2", "acme", "control", "orders")
    with pytest.raises(TopicError, match="queue"):
        t.with_queue("bad/name")


@pytest.mark.parametrize(
    ("kwargs", "part", "words"),
    [
        ({"qos": "q3"}, "qos", "unknown qos 'q3'"),
        ({"qos": ""}, "qos", "qos is empty"),
        ({"tenant": ""}, "tenant", "tenant is empty"),
        ({"namespace": "a+b"}, "namespace", "MQTT wildcard"),
        ({"namespace": "#"}, "namespace", "MQTT wildcard"),
        ({"queue": ""}, "queue", "queue is empty"),
        ({"queue": "a/b"}, "queue", "outside [A-Za-z0-9_.-]"),
        ({"queue": "with space"}, "queue", "outside [A-Za-z0-9_.-]"),
        ({"tenant": "a:b"}, "tenant", "outside [A-Za-z0-9_.-]"),
        ({"tenant": "ümlaut"}, "tenant", "outside [A-Za-z0-9_.-]"),
    ],
)
def test_each_bad_part_is_named(kwargs: dict[str, str], part: str, words: str) -> None:
    args = {"queue": "q", **kwargs}
    with pytest.raises(TopicError) as err:
        topic(**args)
    assert part in str(err.value)
    assert words in str(err.value)
    assert isinstance(err.value, SchemaError) and isinstance(err.value, ValueError)
    # the same name, parsed, fails on the same part
    name = f"{args.get('qos', 'q1')}/{args.get('tenant', 'tg')}/{args.get('namespace', 'flow')}/{args['queue']}"
    if name.count("/") == 3:
        with pytest.raises(TopicError) as err2:
            parse_topic(name)
        assert part in str(err2.value)


def test_bad_characters_are_listed() -> None:
    with pytest.raises(TopicError) as err:
        topic("a b:c")
    assert "' :'" in str(err.value)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("q1/tg/flow", "expected 4 parts"),
        ("q1/tg/flow/a/b", "got 5"),
        ("", "expected 4 parts"),
        ("persistent://tg/flow/a", "native broker URI"),
        ("q1//flow/a", "tenant is empty"),
        ("x1/tg/flow/a", "unknown qos"),
        ("q1/tg/fl+ow/a", "namespace"),
    ],
)
def test_parse_errors(name: str, words: str) -> None:
    with pytest.raises(TopicError) as err:
        parse_topic(name)
    assert words in str(err.value)
    assert repr(name) in str(err.value)


def test_non_strings_are_refused() -> None:
    with pytest.raises(TopicError, match="must be a string, not int"):
        parse_topic(5)  # type: ignore[arg-type]
    with pytest.raises(TopicError, match="queue must be a string, not NoneType"):
        topic(None)  # type: ignore[arg-type]


# -- a queue name cannot reach outside its tenant and namespace ------------------

_ESCAPES = ["..", ".", "...", "a/b", "../x", "x/..", "a#", "+", "$share", "a:b", "a b", "%2e%2e",
            "a\x00b", "\u2215x", "q\n"]


@pytest.mark.parametrize("queue", _ESCAPES)
def test_a_queue_that_would_step_outside_is_refused(queue: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(f"q1/tg/flow/{queue}")


@pytest.mark.parametrize("part", ["tenant", "namespace"])
def test_dotted_tenants_and_namespaces_are_refused(part: str) -> None:
    """RabbitMQ and Kafka join the parts with dots: "flow.x" + "q" would be "flow" + "x.q"."""
    name = "q1/tg.x/flow/q" if part == "tenant" else "q1/tg/flow.x/q"
    with pytest.raises(TopicError, match=part):
        parse_topic(name)


@given(st.lists(st.text(alphabet="abz019_.-", min_size=1, max_size=6), min_size=6, max_size=6))
def test_native_names_are_one_to_one(parts: list[str]) -> None:
    """Two different (topic, subscription) pairs never share a native name on any broker."""
    from trustgraph_pubsub import naming

    pairs = []
    for i in (0, 3):
        t, ns, q = parts[i:i + 3]
        try:
            pairs.append((parse_topic(f"q1/{t}/{ns}/{q}"), naming.check_subscription(q + "s", "x")))
        except (TopicError, naming.BadTopicError):
            return
    (a, sa), (b, sb) = pairs
    if (a.identity, sa) == (b.identity, sb):
        return
    for native in (naming.pulsar_topic, naming.kafka_topic, naming.mqtt_topic,
                   naming.rabbitmq_exchange):
        assert (native(a) == native(b)) == (a.identity == b.identity), native.__name__
    assert naming.rabbitmq_queue(a, sa) != naming.rabbitmq_queue(b, sb)
    assert naming.kafka_group(a, sa) != naming.kafka_group(b, sb)
    assert naming.mqtt_client_id(a, sa, 0) != naming.mqtt_client_id(b, sb, 0)
    assert naming.rabbitmq_registry_queue(a) != naming.rabbitmq_queue(b, sb)
    assert not naming.pulsar_admin_path(a).endswith("/..")


def test_a_dotted_subscription_does_not_share_a_rabbitmq_queue_with_a_dotted_queue() -> None:
    from trustgraph_pubsub import naming

    assert naming.rabbitmq_queue("q1/tg/flow/q", "a.b") != naming.rabbitmq_queue("q1/tg/flow/q.a", "b")
    assert naming.rabbitmq_registry_queue("q1/tg/flow/q") != naming.rabbitmq_queue(
        "q1/tg/flow/q", "subscriptions")
