"""Queue lifecycle: declaring, looking up and deleting subscription queues.

AMQP cannot list the queues bound to an exchange, so each topic keeps a
registry queue naming its subscription queues (see the package docstring);
``_declare_subscription`` enters a new queue there and ``delete_queue(topic)``
reads it.  Round trips that may close their channel (a passive declare that
answers 404) run on short-lived "scratch" channels.

``_QueueLifecycle`` is a base of ``RabbitMQBackend`` (on top of the connection
in ``_BackendConnection``), so consumers and tests keep calling
``backend._passive_declare()`` and ``backend._delete_queues()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pika
import pika.exceptions
from pika import spec

from trustgraph_schema.topic import Topic

from ... import naming
from .config import _PERSISTENT, RPC_TIMEOUT
from .connection import _BackendConnection, _Channel, _set_result
from .errors import _LOOKUPS


def _queue_arguments(queue: str, durable: bool, queue_type: str) -> dict[str, Any]:
    """Declaration arguments of a subscription queue (see the package docstring)."""
    if durable and queue_type == "quorum":
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
    }


class _QueueLifecycle(_BackendConnection):
    """Queue declare/exists/delete and the topic's subscription registry."""

    queue_type: str

    # -- admin round trips on short-lived channels ---------------------------------

    async def _scratch(self, what: str) -> _Channel:
        return await self._open_channel(await self._connection(), what)

    async def _passive_declare(self, queue: str) -> bool:
        """Whether ``queue`` exists (a 404 closes the channel, so it is a scratch one).

        A 405 (RESOURCE_LOCKED) is another connection's exclusive queue: it exists.
        """
        chan = await self._scratch(f"look up queue {queue!r}")
        _LOOKUPS.channels.add(chan.ch)
        try:
            await chan.call(chan.ch.queue_declare, queue, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return False
            if exc.reply_code == 405:
                return True
            raise self._translate(exc, f"look up queue {queue!r}") from exc
        except Exception as exc:
            raise self._translate(exc, f"look up queue {queue!r}") from exc
        finally:
            await chan.close()

    async def _declare_subscription(
        self, chan: _Channel, parsed: Topic, queue: str, *, ephemeral: bool = False
    ) -> None:
        """Exchange, registry entry (for a new queue), queue and binding, on ``chan``.

        ``ephemeral``: an exclusive, auto-delete, non-durable classic queue,
        not registered (see the package docstring).
        """
        exchange = naming.check_rabbitmq_name(naming.rabbitmq_exchange(parsed), parsed)
        registry = naming.check_rabbitmq_name(naming.rabbitmq_registry_queue(parsed), parsed)
        ch = chan.ch
        await chan.call(ch.exchange_declare, exchange=exchange, exchange_type="fanout", durable=True)
        if ephemeral:
            await chan.call(
                ch.queue_declare, queue, durable=False, exclusive=True, auto_delete=True,
                arguments=_queue_arguments(queue, False, self.queue_type),
            )
            await chan.call(ch.queue_bind, queue, exchange)
            return
        if not await self._passive_declare(queue):
            # Registered before it exists: a crash in between leaves a harmless stale
            # entry, never an orphan queue that deleting the topic would miss.
            await chan.call(ch.queue_declare, registry, durable=True,
                            arguments={"x-queue-type": "classic"})
            ch.basic_publish(
                "", registry, queue.encode("utf-8"),
                pika.BasicProperties(delivery_mode=_PERSISTENT),
            )
        durable = parsed.qos != "q0"
        await chan.call(
            ch.queue_declare, queue, durable=durable,
            arguments=_queue_arguments(queue, durable, self.queue_type),
        )
        await chan.call(ch.queue_bind, queue, exchange)

    async def _registered_queues(self, registry: str) -> list[str]:
        """The subscription queues a topic's registry names (read without consuming)."""
        if not await self._passive_declare(registry):
            return []
        chan = await self._scratch(f"read {registry!r}")
        names: dict[str, None] = {}
        current: list[asyncio.Future[bytes | None]] = []

        def on_empty(_frame: Any) -> None:
            if current:
                _set_result(current[-1], None)

        def on_ok(_ch: Any, _method: Any, _props: Any, body: bytes) -> None:
            if current:
                _set_result(current[-1], body)

        chan.ch.add_callback(on_empty, [spec.Basic.GetEmpty], one_shot=False)
        try:
            while True:
                fut: asyncio.Future[bytes | None] = chan.future()
                current.append(fut)
                chan.ch.basic_get(registry, on_ok, auto_ack=False)
                async with asyncio.timeout(RPC_TIMEOUT):
                    body = await fut
                current.pop()
                if body is None:
                    break
                names[body.decode("utf-8", "replace")] = None
        except Exception as exc:
            raise self._translate(exc, f"read subscriptions of {registry!r}") from exc
        finally:
            # Closing returns the unacknowledged entries to the registry.
            await chan.close()
        return list(names)

    # -- the PubSubBackend API: queue lifecycle ------------------------------------

    async def create_queue(self, topic: str, subscription: str) -> None:
        """Declare the subscription queue (idempotent, as AMQP declares are)."""
        self._check()
        parsed = naming.parse(topic)
        queue = naming.check_rabbitmq_name(naming.rabbitmq_queue(parsed, subscription), parsed)
        what = f"create queue {subscription!r} on {topic}"
        chan = await self._scratch(what)
        try:
            await self._declare_subscription(chan, parsed, queue)
        except Exception as exc:
            raise self._translate(exc, what) from exc
        finally:
            await chan.close()

    async def ensure_queue(self, topic: str, subscription: str) -> None:
        await self.create_queue(topic, subscription)

    async def queue_exists(self, topic: str, subscription: str) -> bool:
        self._check()
        parsed = naming.parse(topic)
        queue = naming.check_rabbitmq_name(naming.rabbitmq_queue(parsed, subscription), parsed)
        return await self._passive_declare(queue)

    async def delete_queue(self, topic: str, subscription: str | None = None) -> None:
        """Delete one subscription's queue, or (``subscription=None``) the topic's
        exchange with every subscription queue its registry names.  Deleting
        what does not exist is not an error."""
        self._check()
        parsed = naming.parse(topic)
        if subscription is not None:
            queues = [
                naming.check_rabbitmq_name(naming.rabbitmq_queue(parsed, subscription), parsed)
            ]
        else:
            registry = naming.check_rabbitmq_name(naming.rabbitmq_registry_queue(parsed), parsed)
            queues = [*await self._registered_queues(registry), registry]
        what = f"delete {topic}" + (f" subscription {subscription!r}" if subscription else "")
        exchange = None
        if subscription is None:
            exchange = naming.check_rabbitmq_name(naming.rabbitmq_exchange(parsed), parsed)
        await self._delete_queues(queues, what, exchange)

    async def _delete_queues(self, queues: list[str], what: str, exchange: str | None = None) -> None:
        """Delete ``queues`` (then ``exchange``) on a scratch channel; missing ones are fine."""
        chan = await self._scratch(what)
        try:
            for queue in queues:
                await chan.call(chan.ch.queue_delete, queue)
            if exchange is not None:
                await chan.call(chan.ch.exchange_delete, exchange)
        except Exception as exc:
            raise self._translate(exc, what) from exc
        finally:
            await chan.close()
