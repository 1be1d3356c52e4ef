"""FastStream (0.7, ``faststream[kafka,rabbit,mqtt]``), written as its documentation shows.

A ``KafkaBroker`` / ``RabbitBroker`` / ``MQTTBroker`` with a subscriber whose
handler takes the message as a typed parameter (FastStream decodes the JSON
and validates it into ``Payload``), ``AckPolicy.ACK`` (acknowledge after the
handler returns: the SDK's at-least-once), and ``broker.publish``.  One
broker (one connection) per consumer, as one FastStream app per consumer
would have; they share the subscription the trial made.

* Kafka: the subscriber joins the subscription's group
  (``naming.kafka_group``) with the session timeout and heartbeat interval
  the SDK's members use (the trial's ``kafka_session_timeout_ms``);
  publishes are ``no_confirm=True`` futures, gathered at the end (acks=all);
* RabbitMQ: the subscriber consumes the subscription's queue as declared
  (``declare=False``), prefetch 100; publishes go to the topic's exchange
  with publisher confirms, 100 awaited at a time;
* MQTT: each consumer's client takes over one of the subscription's sessions
  (``naming.mqtt_client_id``, ``clean_session=False``), QoS 1; publishes at
  QoS 1, 100 awaited at a time.

Only throughput is compared with FastStream (``rr`` and ``paced`` raise
``NotImplementedError``): its request/response needs a reply topic protocol
of its own, and latency is compared with the raw clients.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from faststream.middlewares import AckPolicy

from benchmarks.workloads import Payload, Seen, payloads, warmup
from trustgraph_pubsub import naming
from trustgraph_pubsub.backends.kafka.config import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS
from trustgraph_schema import codec

WINDOW = 100
PREFETCH = 100


async def _windowed(send: Any, data: list[Any]) -> None:
    """``await send(d)`` for each, ``WINDOW`` in flight at a time."""
    for start in range(0, len(data), WINDOW):
        await asyncio.gather(*(send(d) for d in data[start:start + WINDOW]))


class FastStream:
    name = "faststream"

    def __init__(self, broker: str, config: dict[str, Any]) -> None:
        if broker not in ("kafka", "rabbitmq", "mqtt"):
            raise NotImplementedError(f"FastStream has no {broker} broker")
        self.kind = broker
        self.config = config

    async def close(self) -> None:
        pass

    # -- brokers ------------------------------------------------------------

    def _broker(self, *, client_id: str = "") -> Any:
        c = self.config
        if self.kind == "kafka":
            from faststream.kafka import KafkaBroker

            return KafkaBroker(c["kafka_bootstrap_servers"], acks="all", linger_ms=0, logger=None)
        if self.kind == "rabbitmq":
            from faststream.rabbit import RabbitBroker

            return RabbitBroker(
                host=c.get("rabbitmq_host") or "127.0.0.1", port=int(c.get("rabbitmq_port") or 5672),
                virtualhost=c.get("rabbitmq_vhost") or "/", logger=None,
                security=_rabbit_security(c),
            )
        from faststream.mqtt import MQTTBroker

        return MQTTBroker(
            host=c.get("mqtt_host") or "127.0.0.1", port=int(c.get("mqtt_port") or 1883),
            client_id=client_id, clean_session=not client_id,
            session_expiry_interval=int(c.get("mqtt_session_expiry") or 7 * 24 * 3600) if client_id else 0,
            logger=None,
        )

    def _subscribe(self, broker: Any, topic: str, sub: str) -> Any:
        if self.kind == "kafka":
            session = int(self.config.get("kafka_session_timeout_ms") or SESSION_TIMEOUT_MS)
            return broker.subscriber(naming.kafka_topic(topic), group_id=naming.kafka_group(topic, sub),
                                     auto_offset_reset="earliest", ack_policy=AckPolicy.ACK,
                                     session_timeout_ms=session,
                                     heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS)
        if self.kind == "rabbitmq":
            from faststream.rabbit import Channel, RabbitQueue

            return broker.subscriber(RabbitQueue(naming.rabbitmq_queue(topic, sub), declare=False),
                                     channel=Channel(prefetch_count=PREFETCH),
                                     ack_policy=AckPolicy.ACK)
        from faststream.mqtt import QoS

        return broker.subscriber(naming.mqtt_topic(topic), qos=QoS.AT_LEAST_ONCE, shared=sub,
                                 ack_policy=AckPolicy.ACK)

    async def _publish_all(self, broker: Any, topic: str, values: list[Payload]) -> None:
        encode = codec.encode
        if self.kind == "kafka":
            native = naming.kafka_topic(topic)
            futs = [await broker.publish(encode(v), native, no_confirm=True) for v in values]
            await asyncio.gather(*futs)
        elif self.kind == "rabbitmq":
            from faststream.rabbit import RabbitExchange

            exchange = RabbitExchange(naming.rabbitmq_exchange(topic), declare=False)
            await _windowed(lambda v: broker.publish(encode(v), exchange=exchange, persist=True), values)
        else:
            from faststream.mqtt import QoS

            native = naming.mqtt_topic(topic)
            await _windowed(lambda v: broker.publish(encode(v), native, qos=QoS.AT_LEAST_ONCE), values)

    # -- workloads ----------------------------------------------------------

    async def produce(self, topic: str, n: int) -> float:
        values = payloads(n)
        w = warmup(n)
        broker = self._broker()
        await broker.start()
        try:
            await self._publish_all(broker, topic, values[:w])
            t0 = time.perf_counter()
            await self._publish_all(broker, topic, values[w:])
            return time.perf_counter() - t0
        finally:
            await broker.stop()

    async def consume(self, topic: str, sub: str, n: int, consumers: int) -> tuple[float, int, int]:
        seen = Seen(n)
        brokers = []
        for slot in range(consumers):
            client_id = naming.mqtt_client_id(topic, sub, slot) if self.kind == "mqtt" else ""
            broker = self._broker(client_id=client_id)

            @self._subscribe(broker, topic, sub)
            async def handle(msg: Payload) -> None:
                seen.add(msg.n)

            brokers.append(broker)
        await asyncio.gather(*(b.start() for b in brokers))
        try:
            await seen.wait(300)
        finally:
            await asyncio.gather(*(b.stop() for b in brokers), return_exceptions=True)
        return seen.result()

    async def rr(self, req: str, resp: str, n: int, concurrency: int) -> list[float]:
        raise NotImplementedError("request/response is compared with the raw clients only")

    async def paced(self, topic: str, sub: str, rate: float, seconds: float) -> list[float]:
        raise NotImplementedError("latency is compared with the raw clients only")

    async def send_paced(self, topic: str, rate: float, seconds: float) -> None:
        raise NotImplementedError


def _rabbit_security(c: dict[str, Any]) -> Any:
    from faststream.security import SASLPlaintext

    return SASLPlaintext(username=c.get("rabbitmq_username") or "guest",
                         password=c.get("rabbitmq_password") or "guest")
