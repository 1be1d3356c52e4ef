"""A stalled link: connections stay open and nothing gets through, the way a dead peer looks.

Clients reach the broker through ``TcpProxy``; ``blackhole()`` swallows every
byte both ways without closing anything.  Per backend, a resilient
``Consumer`` and ``Producer`` run through the proxy:

1. messages flow;
2. the link stalls for ``TG_STALL_SECONDS`` (12 here, 40 in ``make soak``),
   longer where the backend's bound is longer, while the producer keeps sending;
3. every connection the client used during the stall (sent bytes into the
   blackhole) must be given up -- closed -- within the backend's bound, and a
   first new connection must come within it too (the proxy records both);
4. the link comes back: every message whose ``send`` returned arrives, none
   is lost, duplicates are counted and printed.

The bounds: MQTT ``--mqtt-keepalive`` and RabbitMQ ``--rabbitmq-heartbeat``
are set to 2 s (bound 10 s).  Kafka: ``--kafka-request-timeout-ms 2000``; the
producer gives up after it, a group member's requests after 11 s (a JoinGroup
may rightly be held for the 6 s session timeout; ``kafka.config.
consumer_request_timeout_ms``).  Pulsar: the C++ client's keep-alive is fixed
at 30 s (pulsar-client 3.13's Python API does not set it), so a stall is
noticed 30 to 60 s in and the Pulsar case stalls for 70 s whatever
``TG_STALL_SECONDS`` says.  (Pulsar's first new connection can come sooner:
the backend opens a plain TCP probe to diagnose a timed-out create.)

Pulsar and Kafka clients learn the broker's address from a lookup (Pulsar) or
metadata (Kafka) and would leave a bootstrap proxy behind.  Kafka: a private
tansu advertises the proxy (``--advertised-listener-url``).  pulsar-lite has
no such option (it advertises its ``--addr``), so the proxy rewrites its
lookup answers (``tests.brokers.pulsar.LookupRewriter``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import Broker, BrokerUnavailable, free_port
from tests.brokers.proxy import TcpProxy
from trustgraph_pubsub import Consumer, Message, Producer, get_pubsub
from trustgraph_pubsub.backends.kafka.config import consumer_request_timeout_ms
from trustgraph_schema.topic import topic

STALL = float(os.environ.get("TG_STALL_SECONDS", "12"))
KEEPALIVE = 2
#: the Pulsar C++ client pings an idle connection every 30 s and closes it when the
#: ping is still unanswered at the next tick; pulsar-client 3.13's Python API has
#: no setting for it (``ClientConfiguration`` binds no keep-alive), so a stalled
#: Pulsar link is noticed 30 to 60 s after it stalls, whatever the SDK sets.
PULSAR_KEEPALIVE = 30
#: the Kafka clients' request timeout here (``--kafka-request-timeout-ms``).
KAFKA_REQUEST_TIMEOUT_MS = 2000


@dataclass
class Item:
    n: int


@dataclass
class Route:
    """How one backend's clients reach their broker through the proxy."""

    proxy: TcpProxy
    config: dict[str, Any]
    #: seconds after the stall begins by which the client must have reconnected
    bound: float
    #: what sets the bound, for the printout
    why: str
    #: how long the link stalls (at least ``STALL``; longer where the bound is)
    stall: float
    cleanup: Callable[[], Awaitable[None]] | None = None


async def route(broker: Broker) -> Route:
    """A proxy in front of ``broker`` (or a private broker), and the config through it."""
    cfg: dict[str, Any] = {"pubsub_backend": broker.name, **broker.backend_config()}
    if broker.name == "pulsar":
        return await _pulsar_route(broker, cfg)
    if broker.name == "kafka":
        return await _kafka_route(cfg)
    key = "mqtt" if broker.name == "mqtt" else "rabbitmq"
    proxy = TcpProxy(str(cfg[f"{key}_host"]), int(cfg[f"{key}_port"]))
    await proxy.start()
    if key == "mqtt":
        cfg.update(mqtt_host="127.0.0.1", mqtt_port=proxy.port, mqtt_keepalive=KEEPALIVE,
                   mqtt_connect_timeout=3.0)
        why = f"--mqtt-keepalive {KEEPALIVE}"
    else:
        cfg.update(rabbitmq_host="127.0.0.1", rabbitmq_port=proxy.port, rabbitmq_heartbeat=KEEPALIVE)
        why = f"--rabbitmq-heartbeat {KEEPALIVE}"
    return Route(proxy, cfg, 4 * KEEPALIVE + 2, why, STALL)


async def _pulsar_route(broker: Broker, cfg: dict[str, Any]) -> Route:
    """pulsar-lite behind a proxy that rewrites its lookup answers to name the proxy."""
    from tests.brokers.pulsar import LookupRewriter, PulsarBroker

    assert isinstance(broker, PulsarBroker)
    if broker.external:
        pytest.skip("the lookup rewrite assumes pulsar-lite's answers (TG_PULSAR_URL names another broker)")
    port = free_port()
    rewriter = LookupRewriter(broker.url, f"pulsar://127.0.0.1:{port}")
    proxy = TcpProxy("127.0.0.1", broker.port, port=port, rewrite=rewriter)
    await proxy.start()
    cfg.update(pulsar_host=f"pulsar://127.0.0.1:{port}", pulsar_operation_timeout=3,
               pulsar_send_timeout_ms=2000)
    bound = 2 * PULSAR_KEEPALIVE + 5
    return Route(proxy, cfg, bound, f"the client's fixed {PULSAR_KEEPALIVE} s keep-alive",
                 max(STALL, bound + 5))


async def _kafka_route(cfg: dict[str, Any]) -> Route:
    """A private tansu that advertises the proxy's port."""
    if os.environ.get("TG_KAFKA_BOOTSTRAP"):
        pytest.skip("needs a tansu of its own behind a proxy (TG_KAFKA_BOOTSTRAP names an external Kafka)")
    from tests.brokers.kafka import _Tansu, _tansu_binary

    workdir = Path(tempfile.mkdtemp(prefix="tg-tansu-stall-"))
    port = free_port()
    own = _Tansu(_tansu_binary(), workdir, "tansu-stall", advertised=f"127.0.0.1:{port}")
    try:
        await asyncio.to_thread(own.start)
    except BrokerUnavailable:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    proxy = TcpProxy("127.0.0.1", own.port, port=port)
    await proxy.start()

    async def cleanup() -> None:
        await asyncio.to_thread(own.kill)
        shutil.rmtree(workdir, ignore_errors=True)

    cfg.update(kafka_bootstrap_servers=proxy.address, kafka_request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS)
    # The producer gives up after the request timeout; a group member's requests wait
    # longer (a JoinGroup may rightly be held for the session timeout).
    member = consumer_request_timeout_ms(KAFKA_REQUEST_TIMEOUT_MS, 5, group=True) / 1000
    bound = member + 3
    return Route(proxy, cfg, bound, f"--kafka-request-timeout-ms {KAFKA_REQUEST_TIMEOUT_MS}, "
                 f"{member:g} s for a group member", max(STALL, bound + 3), cleanup)


def _retrieve_orphans() -> None:
    """Mark as seen the exceptions of finished tasks nobody awaited.

    aiokafka leaves some behind when a link dies under it (its connection
    readers, a shielded commit the consumer stopped waiting for).  Their
    "never retrieved" report, logged whenever they are collected, formats a
    traceback, which on CPython 3.11.7 parses source with ``ast``; if that
    happens inside pytest's own assertion-rewriting parse, the interpreter's
    AST constructor (not re-entrant there) raises ``SystemError: AST
    constructor recursion depth mismatch`` and pytest dies after the tests.
    """
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Task) and obj.done() and not obj.cancelled():
            obj.exception()


@pytest.mark.parametrize("broker", ["mqtt", "rabbitmq", "kafka", "pulsar"], indirect=True)
async def test_a_stalled_link_is_noticed_and_nothing_is_lost(broker: Broker) -> None:
    r = await route(broker)
    proxy, stall = r.proxy, r.stall
    backend = get_pubsub(**r.config)
    t = topic(f"stall-{os.urandom(4).hex()}", namespace="test")
    seen: dict[int, int] = {}

    async def handle(msg: Message) -> None:
        n = msg.value().n
        seen[n] = seen.get(n, 0) + 1

    sent = 0
    loop = asyncio.get_running_loop()
    try:
        await backend.create_queue(t, "s")
        consumer = Consumer(backend, t, "s", Item, handle, concurrency=4)
        producer = Producer(backend, t, Item, send_deadline=stall + 60)
        await consumer.start()
        await producer.start()
        try:
            for _ in range(20):
                await producer.send(Item(sent))
                sent += 1
            await producer.flush()
            for _ in range(600):
                if len(seen) == sent:
                    break
                await asyncio.sleep(0.05)
            assert len(seen) == sent, "messages did not flow before the stall"

            stalled_at = loop.time()
            proxy.blackhole()
            stalled = [i for i in range(len(proxy.accepted)) if i not in proxy.ended]

            async def keep_sending() -> None:
                nonlocal sent
                while loop.time() - stalled_at < stall + 30:
                    await producer.send(Item(sent))  # returns only once accepted
                    sent += 1
                    await asyncio.sleep(0.1)

            sender = asyncio.create_task(keep_sending())
            await asyncio.sleep(stall)
            reconnects = [a - stalled_at for a in proxy.accepted if a > stalled_at]
            # connections the client used during the stall (an idle one has nothing to notice)
            used = [i for i in stalled if proxy.swallowed.get(i)]
            given_up = [proxy.ended[i] - stalled_at for i in used if i in proxy.ended]
            proxy.resume()
            resumed_at = time.monotonic()
            await asyncio.sleep(3)
            sender.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sender
            await asyncio.wait_for(producer.flush(), 60)
            for _ in range(1200):
                if all(i in seen for i in range(sent)):
                    break
                await asyncio.sleep(0.05)
            recovered = time.monotonic() - resumed_at
        finally:
            await producer.stop()
            await consumer.stop()
    finally:
        await backend.close()
        await proxy.close()
        if r.cleanup is not None:
            await r.cleanup()
        _retrieve_orphans()

    lost = [i for i in range(sent) if i not in seen]
    dups = sum(c - 1 for c in seen.values())
    detected = reconnects[0] if reconnects else None
    last = max(given_up) if used and len(given_up) == len(used) else None
    print(f"\n{broker.name}: stall {stall:g}s, bound {r.bound:g}s ({r.why}): first reconnect "
          f"{'never' if detected is None else f'{detected:.1f}s'} after the stall began "
          f"({len(reconnects)} during it); {len(given_up)} of {len(used)} stalled connections in use "
          f"({len(stalled)} open) given up, the last {'never' if last is None else f'at {last:.1f}s'}; sent {sent}, "
          f"lost {len(lost)}, duplicates {dups}, all arrived by {recovered:.1f}s after resume")
    assert detected is not None, "the client never noticed the stalled connection"
    assert detected <= r.bound, f"noticed only after {detected:.1f}s"
    assert last is not None, f"only {len(given_up)} of {len(used)} stalled connections in use were given up"
    assert last <= r.bound, f"the last stalled connection was given up only after {last:.1f}s"
    assert not lost, f"lost {len(lost)} of {sent}: {lost[:10]}"
