"""The client libraries' private internals that the broker backends rely on.

The backends reach past the public APIs of pulsar-client, aiokafka, pika and
paho-mqtt where those cost too much or cannot say what is needed (each is
listed, with why, in the backend's module docstring).  A release of a client
may move or rename any of them without notice; these checks make such an
upgrade fail here, by name, instead of somewhere deep in a broker test or in
production.  They need no broker: modules are imported, classes inspected,
and objects built only where building them does no I/O.

``pyproject.toml`` bounds each client to the minor versions these checks
passed on, and ``constraints.txt`` pins the versions tested.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import re
from typing import Any

import pytest

PULSAR = "trustgraph_pubsub/backends/pulsar/"
KAFKA = "trustgraph_pubsub/backends/kafka/"
RABBITMQ = "trustgraph_pubsub/backends/rabbitmq/"
MQTT = "trustgraph_pubsub/backends/mqtt/"


def _broken(distribution: str, backend: str, internal: str, purpose: str) -> str:
    """The failure message: which backend uses what, for what, and which release broke it."""
    version = importlib.metadata.version(distribution)
    return (
        f"{distribution} {version} changed {internal}, which {backend} uses {purpose}; "
        f"adapt {backend} (and its docstring's list of private internals), or keep "
        f"{distribution} below this version in pyproject.toml and constraints.txt"
    )


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


# -- pulsar-client (trustgraph_pubsub/backends/pulsar/) ------------------------------


def _pulsar_broken(internal: str, purpose: str) -> str:
    return _broken("pulsar-client", PULSAR, internal, purpose)


def test_pulsar_c_extension_module() -> None:
    import _pulsar  # type: ignore[import-not-found]

    for name in ("Result", "MessageBuilder", "Message", "Producer", "Consumer"):
        assert hasattr(_pulsar, name), _pulsar_broken(
            f"the C extension module _pulsar (_pulsar.{name})",
            "to call the C++ producer and consumer directly on the hot paths",
        )


def test_pulsar_result_codes() -> None:
    """Every ``_R.<name>`` (``_R = _pulsar.Result``) the backend names still exists."""
    import _pulsar  # type: ignore[import-not-found]

    import trustgraph_pubsub.backends.pulsar as backend

    source = "".join(
        _source(importlib.import_module(f"{backend.__name__}.{module.name}"))
        for module in pkgutil.iter_modules(backend.__path__)
    )
    used = set(re.findall(r"\b_R\.([A-Za-z_]\w*)", source))
    assert "Ok" in used and len(used) > 10, (
        f"no _R.<code> references found in {PULSAR}: this check no longer reads the package right"
    )
    missing = sorted(name for name in used if not hasattr(_pulsar.Result, name))
    assert not missing, _pulsar_broken(
        f"_pulsar.Result (codes {', '.join(missing)} are gone)",
        "to map the client's result codes to the SDK's errors",
    )


def test_pulsar_message_builder() -> None:
    import _pulsar  # type: ignore[import-not-found]

    purpose = "to build each message itself, without pulsar.asyncio's per-send wrapper"
    builder = _pulsar.MessageBuilder()
    for method in ("content", "property", "partition_key", "build"):
        assert callable(getattr(builder, method, None)), _pulsar_broken(
            f"_pulsar.MessageBuilder.{method}", purpose
        )
    builder.content(b"payload")
    builder.property("k", "v")
    builder.partition_key("key")
    msg = builder.build()
    assert isinstance(msg, _pulsar.Message), _pulsar_broken(
        "_pulsar.MessageBuilder.build (no longer returns a _pulsar.Message)", purpose
    )
    assert (msg.data(), msg.properties(), msg.partition_key()) == (b"payload", {"k": "v"}, "key"), (
        _pulsar_broken("_pulsar.MessageBuilder (content/property/partition_key)", purpose)
    )


def test_pulsar_message_accessors() -> None:
    import _pulsar  # type: ignore[import-not-found]

    for method in ("data", "properties", "redelivery_count"):
        assert callable(getattr(_pulsar.Message, method, None)), _pulsar_broken(
            f"_pulsar.Message.{method}",
            "to read received messages (raw _pulsar.Message objects, also the ack handles)",
        )


def test_pulsar_asyncio_wrappers_keep_the_raw_handles() -> None:
    import pulsar
    import pulsar.asyncio as pulsar_asyncio

    raw = object()
    schema = pulsar.schema.BytesSchema()
    producer = pulsar_asyncio.Producer(raw, schema)
    assert getattr(producer, "_producer", None) is raw, _pulsar_broken(
        "pulsar.asyncio.Producer._producer (the C++ producer it wraps)",
        "to send and flush through the C++ producer with its own callbacks",
    )
    consumer = pulsar_asyncio.Consumer(raw, schema)
    assert getattr(consumer, "_consumer", None) is raw, _pulsar_broken(
        "pulsar.asyncio.Consumer._consumer (the C++ consumer it wraps)",
        "to receive, ack, nack and unsubscribe through the C++ consumer",
    )


def test_pulsar_disconnected_is_a_lost_connection() -> None:
    """Code 46 is the C++ client's ResultDisconnected, unnamed in the binding: a
    request the dropped connection cut short is a lost connection, and says so."""
    from trustgraph_pubsub.backends.pulsar.errors import _R, _client_error
    from trustgraph_pubsub.errors import ConnectionLostError

    err = _client_error(_R(46), "unsubscribe 's' from t", "pulsar://127.0.0.1:1", 30,
                        after_connect=True)
    assert isinstance(err, ConnectionLostError), err
    assert "Disconnected" in str(err) and "???" not in str(err)
    other = _client_error(_R(99), "send to t", "pulsar://127.0.0.1:1", 30, after_connect=True)
    assert "result code 99" in str(other)


def test_pulsar_producer_reads_confirmations_without_a_callback() -> None:
    import _pulsar  # type: ignore[import-not-found]

    fn = getattr(_pulsar.Producer, "last_sequence_id", None)
    assert callable(fn), _pulsar_broken(
        "_pulsar.Producer.last_sequence_id",
        "to read how far the broker confirmed pipelined sends (PulsarProducer._poll)",
    )


@pytest.mark.parametrize(
    ("cls", "method", "takes_message", "purpose"),
    [
        ("Producer", "send_async", True, "for pipelined sends (with or without a callback)"),
        ("Producer", "flush_async", False, "for window flushes and the background watch"),
        ("Consumer", "receive_async", False, "to keep one receive outstanding"),
        ("Consumer", "acknowledge_async", True, "for acks with an inline no-op callback"),
        ("Consumer", "negative_acknowledge_async", True, "for callback-free nacks"),
        ("Consumer", "unsubscribe_async", False, "to unsubscribe without blocking the loop"),
    ],
)
def test_pulsar_raw_async_calls(cls: str, method: str, takes_message: bool, purpose: str) -> None:
    import _pulsar  # type: ignore[import-not-found]

    fn = getattr(getattr(_pulsar, cls), method, None)
    internal = f"_pulsar.{cls}.{method}"
    assert callable(fn), _pulsar_broken(internal, purpose)
    doc = fn.__doc__ or ""
    assert "Callable" in doc, _pulsar_broken(f"{internal} (no longer takes a callback)", purpose)
    if takes_message:
        assert "_pulsar.Message" in doc, _pulsar_broken(
            f"{internal} (no longer takes a _pulsar.Message)", purpose
        )


# -- aiokafka (trustgraph_pubsub/backends/kafka/) -------------------------------------


def _kafka_broken(internal: str, purpose: str) -> str:
    return _broken("aiokafka", KAFKA, internal, purpose)


def _versions(request: Any) -> list[Any]:
    """The request structs ``request`` builds, one per API version it supports."""
    built = []
    for version in range(64):
        try:
            built.append(request.prepare({request.API_KEY: (version, version)}))
        except NotImplementedError:
            continue
    return built


def _array_names(schema: Any, field: str) -> tuple[str, ...] | None:
    """Field names of the items of array ``field`` in a protocol ``Schema``; None if absent."""
    if field not in schema.names:
        return None
    items = getattr(schema.fields[schema.names.index(field)], "array_of", None)
    return tuple(getattr(items, "names", ()))


def test_aiokafka_admin_send_request() -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    purpose = "to send MetadataRequest and DeleteGroupsRequest, which the admin client has no call for"
    send = getattr(AIOKafkaAdminClient, "_send_request", None)
    assert send is not None and inspect.iscoroutinefunction(send), _kafka_broken(
        "AIOKafkaAdminClient._send_request", purpose
    )
    params = list(inspect.signature(send).parameters)
    assert params[:3] == ["self", "request", "node_id"], _kafka_broken(
        f"AIOKafkaAdminClient._send_request's parameters (now {params})", purpose
    )


def test_aiokafka_metadata_request() -> None:
    from aiokafka.protocol.metadata import MetadataRequest

    purpose = "to look a topic up with allow_auto_topic_creation=False (a plain look-up creates it)"
    try:
        request = MetadataRequest(["t"], allow_auto_topic_creation=False)
    except TypeError as exc:
        raise AssertionError(
            _kafka_broken(f"aiokafka.protocol.metadata.MetadataRequest ({exc})", purpose)
        ) from exc
    built = _versions(request)
    assert built, _kafka_broken("MetadataRequest.prepare (builds no version)", purpose)
    assert any(
        s.API_VERSION >= 4 and s.to_object().get("allow_auto_topic_creation") is False for s in built
    ), _kafka_broken("MetadataRequest (allow_auto_topic_creation no longer sent)", purpose)
    for struct in built:
        schema = struct.RESPONSE_TYPE.SCHEMA
        topics = _array_names(schema, "topics") or ()
        partitions_of = schema.fields[schema.names.index("topics")].array_of if topics else None
        partitions = _array_names(partitions_of, "partitions") if partitions_of else None
        assert {"topic", "error_code", "partitions"} <= set(topics) and "partition" in (
            partitions or ()
        ), _kafka_broken(
            f"MetadataResponse v{struct.API_VERSION} (topics[].topic/error_code/partitions[].partition)",
            "to read a topic's error code and partitions from to_object()",
        )


def test_aiokafka_delete_groups_request() -> None:
    from aiokafka.protocol.admin import DeleteGroupsRequest

    purpose = "to delete a subscription's consumer group (the admin client has no call for it)"
    try:
        request = DeleteGroupsRequest(["g"])
    except TypeError as exc:
        raise AssertionError(
            _kafka_broken(f"aiokafka.protocol.admin.DeleteGroupsRequest ({exc})", purpose)
        ) from exc
    built = _versions(request)
    assert built, _kafka_broken("DeleteGroupsRequest.prepare (builds no version)", purpose)
    for struct in built:
        names = _array_names(struct.RESPONSE_TYPE.SCHEMA, "results")
        assert names == ("group_id", "error_code"), _kafka_broken(
            f"DeleteGroupsResponse v{struct.API_VERSION}.results (now {names})",
            "unpacking each result as (group_id, error_code)",
        )


def test_aiokafka_create_topics_response() -> None:
    from aiokafka.protocol.admin import CreateTopicsRequest

    built = _versions(CreateTopicsRequest(create_topic_requests=[], timeout=1000, validate_only=False))
    assert built, _kafka_broken("CreateTopicsRequest.prepare (builds no version)", "to create topics")
    for struct in built:
        names = _array_names(struct.RESPONSE_TYPE.SCHEMA, "topic_errors") or ()
        assert names[:2] == ("topic", "error_code") and (
            len(names) == 2 or names[2] == "error_message"
        ), _kafka_broken(
            f"CreateTopicsResponse v{struct.API_VERSION}.topic_errors (now {names})",
            "reading what create_topics returns as (topic, error_code[, error_message])",
        )


def test_aiokafka_delete_topics_response() -> None:
    from aiokafka.protocol.admin import DeleteTopicsRequest

    built = _versions(DeleteTopicsRequest(["t"], 1000))
    assert built, _kafka_broken("DeleteTopicsRequest.prepare (builds no version)", "to delete topics")
    for struct in built:
        names = _array_names(struct.RESPONSE_TYPE.SCHEMA, "topic_error_codes")
        assert names == ("topic", "error_code"), _kafka_broken(
            f"DeleteTopicsResponse v{struct.API_VERSION}.topic_error_codes (now {names})",
            "unpacking what delete_topics returns as (topic, error_code)",
        )


def test_aiokafka_create_conn() -> None:
    import aiokafka.conn

    purpose = "to open one SASL connection and tell refused credentials from an unreachable broker"
    create_conn = getattr(aiokafka.conn, "create_conn", None)
    assert create_conn is not None and inspect.iscoroutinefunction(create_conn), _kafka_broken(
        "aiokafka.conn.create_conn", purpose
    )
    params = set(inspect.signature(create_conn).parameters)
    wanted = {
        "host", "port", "client_id", "security_protocol", "ssl_context",
        "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
    }
    assert wanted <= params, _kafka_broken(
        f"aiokafka.conn.create_conn's parameters (missing {sorted(wanted - params)})", purpose
    )
    assert callable(getattr(aiokafka.conn.AIOKafkaConnection, "close", None)), _kafka_broken(
        "aiokafka.conn.AIOKafkaConnection.close", purpose
    )


# -- pika (trustgraph_pubsub/backends/rabbitmq/) ---------------------------------------


def _pika_broken(internal: str, purpose: str) -> str:
    return _broken("pika", RABBITMQ, internal, purpose)


_COALESCE = "to join queued frames into one send() (_coalesce_writes)"


def test_pika_connection_keeps_its_transport() -> None:
    from pika.adapters.asyncio_connection import AsyncioConnection
    from pika.adapters.base_connection import BaseConnection

    assert issubclass(AsyncioConnection, BaseConnection) and re.search(
        r"self\._transport\s*=\s*transport\b", _source(BaseConnection)
    ), _pika_broken("BaseConnection._transport (the connected stream transport)", _COALESCE)


def test_pika_asyncio_adapter_uses_the_async_transports() -> None:
    from pika.adapters import asyncio_connection
    from pika.adapters.utils import io_services_utils

    adapter = getattr(asyncio_connection, "_AsyncioIOServicesAdapter", None)
    assert adapter is not None and issubclass(
        adapter, io_services_utils.StreamingConnectionMixin
    ), _pika_broken("asyncio_connection._AsyncioIOServicesAdapter (its streaming mixin)", _COALESCE)
    connector = getattr(io_services_utils, "_AsyncStreamConnector", None)
    assert connector is not None and "_AsyncPlaintextTransport(" in _source(connector), (
        _pika_broken("io_services_utils._AsyncStreamConnector (the transport it makes)", _COALESCE)
    )


def test_pika_transport_tx_buffers_and_produce() -> None:
    from pika.adapters.utils import io_services_utils

    base = getattr(io_services_utils, "_AsyncTransportBase", None)
    plain = getattr(io_services_utils, "_AsyncPlaintextTransport", None)
    assert base is not None and plain is not None and issubclass(plain, base), _pika_broken(
        "io_services_utils._AsyncTransportBase/_AsyncPlaintextTransport", _COALESCE
    )
    assert re.search(
        r"self\._tx_buffers\b[^=\n]*=\s*(collections\.)?deque\(", _source(base.__init__)
    ), _pika_broken("_AsyncTransportBase._tx_buffers (a deque of queued frames)", _COALESCE)
    produce = getattr(plain, "_produce", None)
    writable = getattr(plain, "_on_socket_writable", None)
    assert callable(produce) and "self._tx_buffers" in _source(produce), _pika_broken(
        "_AsyncPlaintextTransport._produce (sends from _tx_buffers)", _COALESCE
    )
    assert callable(writable) and "self._produce()" in _source(writable), _pika_broken(
        "_AsyncPlaintextTransport._on_socket_writable (calls self._produce(), which the "
        "backend replaces on the instance)",
        _COALESCE + " and to write latency-bound sends at once",
    )


def test_pika_ssl_transport_action_slots() -> None:
    from pika.adapters.utils import io_services_utils

    tls = getattr(io_services_utils, "_AsyncSSLTransport", None)
    purpose = _COALESCE + " over TLS (amqps)"
    assert tls is not None and issubclass(tls, io_services_utils._AsyncTransportBase) and (
        "_AsyncSSLTransport(" in _source(io_services_utils._AsyncStreamConnector)
    ), _pika_broken("io_services_utils._AsyncSSLTransport (the amqps transport)", purpose)
    init, produce = _source(tls.__init__), _source(tls._produce)
    assert "self._ssl_readable_action" in init and "self._ssl_writable_action" in init, (
        _pika_broken("_AsyncSSLTransport's _ssl_readable_action/_ssl_writable_action", purpose)
    )
    assert "super()._produce()" in produce and "self._ssl_writable_action == self._produce" in (
        produce
    ), _pika_broken(
        "_AsyncSSLTransport._produce (sends through the base class's _produce and compares "
        "its action slots with self._produce)", purpose
    )
    assert "self._ssl_writable_action()" in _source(tls._on_socket_writable), _pika_broken(
        "_AsyncSSLTransport._on_socket_writable (runs _ssl_writable_action)", purpose
    )


def test_pika_channel_close_warning() -> None:
    import pika.channel

    purpose = (
        "to filter the WARNING pika logs for the 404 that answers a passive declare "
        "(_ExpectedNotFound reads its args as (reply_code, reply_text, channel))"
    )
    assert pika.channel.LOGGER.name == "pika.channel", _pika_broken(
        f"the channel logger's name (now {pika.channel.LOGGER.name!r})", purpose
    )
    assert re.search(
        r"LOGGER\.warning\(\s*'Received remote Channel\.Close \(%s\): %r on %s',\s*"
        r"method_frame\.method\.reply_code,\s*method_frame\.method\.reply_text,\s*self\)",
        _source(pika.channel.Channel),
    ), _pika_broken("Channel's 'Received remote Channel.Close' warning", purpose)


# -- paho-mqtt (trustgraph_pubsub/backends/mqtt) ----------------------------------------


def _paho_broken(internal: str, purpose: str) -> str:
    return _broken("paho-mqtt", MQTT, internal, purpose)


_SWAP = "to replace paho's socket with _Wire, which gathers paho's writes into one send()"


def _client() -> Any:
    """A paho client made as ``_Link`` makes it; constructing one does no I/O."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="internals-check",
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=True,
        reconnect_on_failure=False,
    )


def test_paho_client_socket_attribute() -> None:
    client = _client()
    assert hasattr(client, "_sock") and client._sock is None, _paho_broken("Client._sock", _SWAP)
    stand_in = object()
    client._sock = stand_in
    try:
        assert client.socket() is stand_in, _paho_broken(
            "Client.socket() (no longer returns Client._sock)",
            _SWAP + ", and to tell whether paho still holds a socket",
        )
    finally:
        client._sock = None  # paho closes whatever it holds when collected


def test_paho_socket_calls_are_covered_by_the_wire() -> None:
    import paho.mqtt.client as mqtt

    from trustgraph_pubsub.backends.mqtt import _Wire

    src = _source(mqtt.Client)
    called = set(re.findall(r"self\._sock\.(\w+)\(", src))
    assert {"send", "recv"} <= called, (
        "no self._sock.send/recv calls found in paho's Client: this check no longer reads it right"
    )
    # ``pending`` is only called on an SSL socket: paho guards it with hasattr().
    missing = sorted(m for m in called - {"pending"} if not callable(getattr(_Wire, m, None)))
    assert not missing, _paho_broken(
        f"Client's use of _sock (now also calls {', '.join(missing)}, which _Wire lacks)", _SWAP
    )
    assert re.search(r"sock = self\._sock\b.*?sock\.close\(\)", _source(mqtt.Client._sock_close),
                     re.S), _paho_broken("Client._sock_close (closes _sock)", _SWAP)


def test_paho_publish_uses_properties_only_through_pack() -> None:
    import paho.mqtt.client as mqtt

    purpose = (
        "to pass _PackedProperties (a Properties subclass packed once, its __init__ "
        "skipped) as publish properties"
    )
    send = getattr(mqtt.Client, "_send_publish", None)
    assert send is not None and "properties.pack()" in _source(send), _paho_broken(
        "Client._send_publish (packs publish properties with properties.pack())", purpose
    )
    used = set(re.findall(r"\bproperties\.(\w+)", _source(mqtt.Client.publish) + _source(send)))
    assert used <= {"pack"}, _paho_broken(
        f"Client.publish/_send_publish (now use properties.{', properties.'.join(sorted(used))})",
        purpose,
    )


def test_paho_packed_properties_match_paho_packing() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from trustgraph_pubsub.backends.mqtt import _user_properties

    purpose = "to pack user properties once, in the wire form Properties.pack gives"
    ours = _user_properties({"k": "v", "ключ": "значение"}, "q1/t/n/q")
    assert isinstance(ours, Properties), _paho_broken("paho.mqtt.properties.Properties", purpose)
    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    theirs.UserProperty = [("k", "v"), ("ключ", "значение")]
    assert ours.pack() == theirs.pack(), _paho_broken("Properties.pack's wire form", purpose)
