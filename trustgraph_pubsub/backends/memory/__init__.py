"""An in-process backend with the full pub/sub semantics.

For service authors' unit tests and single-process runs.  Everything lives in
a ``MemoryHub``: topics keyed by their identity (``tenant/namespace/queue``),
each with its durable subscriptions.  Backends made without a hub share one
process-wide hub, so two ``get_pubsub(pubsub_backend="memory")`` in one
process talk to each other.

Semantics (the same as the broker backends, see ``trustgraph_pubsub.backend``):

* a ``shared`` subscription splits messages between its consumers in turn,
  as brokers do: each attached consumer has a receive queue of ``prefetch``
  messages (default ``DEFAULT_PREFETCH``), the subscription fills those queues
  round-robin, and a consumer takes from its own queue.  So a backlog queued
  before the consumers began to receive is spread over them, not drained by
  whichever asks first (Pulsar's receiver queue; a consumer that attaches
  first may hold up to ``prefetch`` of a backlog, as on a broker).  Messages
  a consumer holds but has not received go back, uncounted, when it closes;
  two subscriptions each get everything;
* ``exclusive`` allows one consumer; ``failover`` allows many, and only the
  first attached receives until it closes (like Pulsar);
* ``initial_position="earliest"`` on a *new* subscription replays the topic's
  retained log; ``"latest"`` starts after it.  An existing subscription keeps
  its own position, as a durable broker cursor does.  q1/q2 topics retain
  their last ``retain`` messages (default 100,000, like a broker's retention
  limit: a process that publishes forever must not grow forever); q0 topics
  retain nothing;
* nack redelivers at once with ``redelivery_count + 1``, at the back of the
  subscription's queue, so a failing message never blocks the stream behind
  it; ``close`` returns unacked messages to the front of the queue (count + 1)
  and keeps the subscription; ``unsubscribe`` deletes it;
* acknowledging a message twice, or one that is no longer outstanding, is a
  no-op (as on Pulsar); it never acks anything else;
* ``ephemeral=True`` (``create_consumer``): the subscription is made for
  that consumer and removed, with its queued messages, when its last
  consumer closes or is dropped (by ``restart()`` too: the connection died);
  an ephemeral consumer cannot join an existing durable subscription;
* queue lifecycle calls are explicit and idempotent; ``delete_queue(topic,
  None)`` removes the topic, its log and every subscription, closing their
  consumers;
* ``MemoryHub.restart()`` simulates a broker restart: every open producer and
  consumer is dropped (their pending and later calls raise
  ``ConnectionLostError``), unacked messages return to their subscriptions,
  q1/q2 data is kept and q0 queued data is lost.

Nothing survives the process, so ``Capabilities.persistent`` is False.  The
payload limit is 5 MiB, the smallest of the real brokers (Pulsar), so code
that passes here does not fail on a broker for size.

Only asyncio primitives are used.  Operations that complete without waiting
still yield to the event loop every ``_YIELD_EVERY`` calls (``config.py``), so
a tight send or receive loop cannot starve other tasks.

The package, laid out as every backend package is:

* ``config.py``    the constants and the check of a consumer's settings;
* ``producer.py``  ``MemoryProducer``;
* ``consumer.py``  ``MemoryConsumer``, its receive queue and acks;
* ``lifecycle.py`` queue lifecycle (name checks; the hub does the work);
* ``hub.py``       this backend's extra: ``MemoryHub``, the broker itself.

There is no ``connection.py``: there is no connection to make or to drive,
a client holds a reference to its hub, and a "lost connection" is only the
hub's ``restart()`` (``hub.py``) or a consumer's closed event loop
(``consumer.py``).  There is no ``errors.py``: there is no client library
whose exceptions need mapping; the SDK's errors are raised directly.

Private internals of a client library relied on: none.  The backend has no
client library; it uses only the standard library (asyncio, its public API).
"""

from __future__ import annotations

from typing import Any

from ... import naming
from ...backend import Capabilities, ConsumerType, InitialPosition
from ...errors import ClosedError
from . import lifecycle
from .config import _CONSUMER_TYPES, check_consumer_settings
from .config import DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE
from .config import DEFAULT_PREFETCH as DEFAULT_PREFETCH
from .config import DEFAULT_RETAIN as DEFAULT_RETAIN
from .consumer import MemoryConsumer
from .hub import MemoryHub, default_hub
from .producer import MemoryProducer

__all__ = ["MemoryBackend", "MemoryConsumer", "MemoryHub", "MemoryProducer", "default_hub"]


class MemoryBackend:
    """The in-process backend; ``hub=None`` uses the process-wide hub."""

    name = "memory"

    def __init__(self, hub: MemoryHub | None = None) -> None:
        self.hub = hub if hub is not None else default_hub()
        self.capabilities = Capabilities(
            persistent=False,
            replay_from_earliest=True,
            native_nack=True,
            ordering=True,
            consumer_groups=True,
            max_message_size=self.hub.max_message_size,
            queue_lifecycle=True,
            redelivery_count=True,
            consumer_types=frozenset(_CONSUMER_TYPES),
            exactly_once=False,
        )
        self._producers: set[MemoryProducer] = set()
        self._consumers: set[MemoryConsumer] = set()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("memory backend is closed; create a new one with get_pubsub()")

    async def create_producer(
        self, topic: str, schema: type[Any] | None, **opts: Any
    ) -> MemoryProducer:
        """Open a producer; options (``latency_bound`` ...) are accepted and ignored."""
        self._check()
        parsed = naming.parse(topic)
        producer = MemoryProducer(self, topic, parsed, schema)
        self._producers.add(producer)
        self.hub._producers.add(producer)
        return producer

    async def create_consumer(
        self,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        initial_position: InitialPosition = "latest",
        consumer_type: ConsumerType = "shared",
        **opts: Any,
    ) -> MemoryConsumer:
        """Subscribe.  ``prefetch`` is the consumer's receive queue (default
        ``DEFAULT_PREFETCH``), filled in turn with the subscription's other
        consumers.  ``ephemeral=True``: the subscription is removed when its last consumer
        closes (see the package docstring)."""
        self._check()
        parsed = naming.parse(topic)
        naming.check_subscription(subscription, topic)
        prefetch = check_consumer_settings(topic, initial_position, consumer_type, opts)
        consumer = MemoryConsumer(self, topic, parsed, subscription, schema, prefetch)
        consumer._sub = self.hub._subscribe(
            consumer, parsed, initial_position, consumer_type, bool(opts.get("ephemeral"))
        )
        consumer._sub.dispatch()
        self._consumers.add(consumer)
        return consumer

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Create the subscription (idempotent, like a broker's declare)."""
        self._check()
        lifecycle.create_queue(self.hub, topic, subscription)

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """Delete a subscription, or the whole topic; missing ones are ignored."""
        self._check()
        lifecycle.delete_queue(self.hub, topic, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        self._check()
        return lifecycle.queue_exists(self.hub, topic, subscription)

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        await self.create_queue(topic, subscription)

    async def close(self) -> None:
        """Close every producer and consumer this backend opened.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for producer in list(self._producers):
            await producer.close()
        for consumer in list(self._consumers):
            await consumer.close()

    def __repr__(self) -> str:
        return f"<MemoryBackend hub={self.hub!r}>"
