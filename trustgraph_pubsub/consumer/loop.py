"""``Consumer``: its settings, ``start``/``stop``, the worker loop and reconnects.

The behaviour, and how the workers take turns at the backend consumer so that
a message costs no task of its own, are described in the package docstring
(``trustgraph_pubsub.consumer``).  The hot path is ``_work``: every message
goes through it inline, so keep calls and lookups per message out of it.
A backend consumer that has them (``NowaitConsumer``) is read and acked with
plain calls; ``receive`` and ``acknowledge`` are awaited only when it holds
nothing, or has no such calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

from .. import naming
from ..backend import BackendConsumer, ConsumerType, InitialPosition, Message, PubSubBackend
from ..errors import (
    BrokerConnectionError,
    ClosedError,
    ConfigurationError,
    MessageDecodeError,
    PubSubError,
    PubSubTimeoutError,
)
from ..lifecycle import Lifecycle
from ..metrics import Metrics, default_metrics
from ..producer import Producer
from ..retry import Backoff, retry
from .dead_letter import _DeadLettering
from .turns import _Worker

#: the package's logger, ``trustgraph_pubsub.consumer``: one name for the consumer's records
log = logging.getLogger(__package__)

#: an async function, or a plain one that returns None (it cannot wait, and
#: costs no coroutine per message: ``Subscriber`` routes replies with one).
Handler = Callable[[Message], Awaitable[None] | None]

#: a worker yields to the event loop once it has been handling messages this long
#: (seconds) since it last waited, in case its backend returns buffered messages
#: without ever suspending.  A time slice, not a count, bounds what other tasks
#: wait whatever a message costs, and reads no clock of its own (it reads the
#: latency metric's, taken as each message ends).  The count it replaces, a
#: yield every 64 messages (about 0.4 ms on Kafka), cost CPU there: 4 members draining 50,000
#: messages on tansu took 7.9-8.7 us a message against 6.8-7.5 with this slice
#: (4 alternating rounds; 5 ms was no better).
_SLICE = 0.002

#: messages the broker may push ahead of acks unless ``prefetch`` says otherwise: enough
#: to keep the pipe full at a few thousand messages a second, little enough to hold in
#: memory (100 messages of 1 MiB at most) and to leave work for competing consumers.
DEFAULT_PREFETCH = 100

#: handler latency clock (what ``loop.time()`` reads, without the method lookups)
_clock = time.monotonic


class Consumer(Lifecycle, _DeadLettering):
    """Run ``handler`` on every message of ``subscription`` on ``topic``.

    ``dead_letter_topic`` defaults to ``naming.dead_letter_topic(topic)``
    (``<queue>.dlq`` in the same qos, tenant and namespace); a native Pulsar
    name needs an explicit one.  ``start_deadline`` bounds how long ``start``
    retries an unreachable broker (None: forever); once started, reconnects
    retry until ``stop``.  ``ephemeral=True``: the subscription goes with this
    consumer (see the package docstring); a reconnect recreates it empty.
    """

    def __init__(
        self,
        backend: PubSubBackend,
        topic: str,
        subscription: str,
        schema: type[Any] | None,
        handler: Handler,
        *,
        concurrency: int = 1,
        prefetch: int = DEFAULT_PREFETCH,
        max_redeliveries: int = 5,
        initial_position: str = "latest",
        consumer_type: str = "shared",
        dead_letter_topic: str | None = None,
        backoff: Backoff | None = None,
        metrics: Metrics | None = None,
        start_deadline: float | None = 60.0,
        ephemeral: bool = False,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"consumer on {topic}: concurrency must be an int >= 1, got {concurrency!r}"
            )
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigurationError(
                f"consumer on {topic}: prefetch must be an int >= 1, got {prefetch!r}"
            )
        if not isinstance(max_redeliveries, int) or max_redeliveries < 0:
            raise ConfigurationError(
                f"consumer on {topic}: max_redeliveries must be an int >= 0, got {max_redeliveries!r}"
            )
        naming.check_subscription(subscription, topic)
        if dead_letter_topic is None:
            if isinstance(topic, str) and "://" in topic:
                raise ConfigurationError(
                    f"consumer on native topic {topic!r}: pass dead_letter_topic= explicitly "
                    "(the default <queue>.dlq is derived from generic names only)"
                )
            dead_letter_topic = naming.dead_letter_topic(topic)
        elif "://" not in dead_letter_topic:
            # A bad dead-letter name would make every poison message cycle forever.
            naming.parse(dead_letter_topic)
        self.backend = backend
        self.topic = topic
        self.subscription = subscription
        self.schema = schema
        self.handler = handler
        self.concurrency = concurrency
        self.prefetch = max(prefetch, concurrency)
        self.max_redeliveries = max_redeliveries
        self.initial_position = initial_position
        self.consumer_type = consumer_type
        self.dead_letter_topic = dead_letter_topic
        self.start_deadline = start_deadline
        self.ephemeral = bool(ephemeral)
        self._backoff = backoff or Backoff(base=0.1, cap=10.0)
        self._metrics_source = metrics or default_metrics()
        self._labels = (topic, subscription, getattr(backend, "name", type(backend).__name__))
        self._m = self._metrics_source.bind(*self._labels)
        self._bc: BackendConsumer | None = None
        self._started = False
        self._workers: list[_Worker] = []
        #: the worker that receives next (None: the first worker free takes it)
        self._turn: _Worker | None = None
        #: workers waiting for the turn, each with the future that wakes it
        self._idle: deque[tuple[_Worker, asyncio.Future[None]]] = deque()
        self._nudge_pending = False
        self._dlq: Producer | None = None
        self._dlq_lock = asyncio.Lock()
        self._dlq_backoff = Backoff(base=0.5, cap=30.0)
        self._stopping = False
        self._stopped = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------

    async def _create(self, deadline: float | None) -> BackendConsumer:
        async def create() -> BackendConsumer:
            return await self.backend.create_consumer(
                self.topic,
                self.subscription,
                self.schema,
                cast(InitialPosition, self.initial_position),
                cast(ConsumerType, self.consumer_type),
                prefetch=self.prefetch,
                ephemeral=self.ephemeral,
            )

        bc = await retry(
            create,
            retry_on=(BrokerConnectionError,),
            deadline=deadline,
            backoff=self._backoff,
            what=f"subscribe {self.subscription!r} to {self.topic}",
        )
        self._backoff.reset()
        return bc

    async def start(self) -> None:
        """Subscribe, then start the ``concurrency`` worker tasks.  Idempotent.

        The subscription exists when this returns, so a message published
        afterwards reaches this consumer even at ``initial_position="latest"``.
        A stopped consumer cannot be started again: make a new one.
        """
        if self._started:
            return
        if self._stopping:
            raise ClosedError(f"consumer {self.subscription!r} on {self.topic} was stopped")
        bc = await self._create(self.start_deadline)
        if self._started or self._stopping:
            # stop() (or another start()) ran while we were subscribing.
            with contextlib.suppress(Exception):
                await bc.close()
            if self._stopping:
                raise ClosedError(f"consumer {self.subscription!r} on {self.topic} was stopped")
            return
        self._bc = bc
        self._started = True
        for i in range(self.concurrency):
            w = _Worker()
            w.task = asyncio.create_task(
                self._work(w), name=f"consumer:{self.topic}:{self.subscription}:{i}"
            )
            self._workers.append(w)

    async def stop(
        self, drain_timeout: float | None = None, *, unsubscribe: bool = False
    ) -> None:
        """Stop receiving, let in-flight handlers finish, close.  Idempotent.

        Handlers still running after ``drain_timeout`` seconds (None: wait for all)
        are cancelled; their messages stay unacked and are redelivered.
        ``unsubscribe=True`` deletes the subscription instead of closing it.
        A handler may call ``stop`` itself: its own message is then settled
        after the backend consumer is closed, so it is redelivered.
        """
        if self._stopping:
            current = asyncio.current_task()
            if any(w.task is current for w in self._workers):
                # A handler calling stop() while another stop() waits for that
                # very handler: waiting here would deadlock both.
                return
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            current = asyncio.current_task()
            # Stop receiving: a worker that is not in a handler holds no message.
            idle = [w.task for w in self._workers if not w.busy and w.task is not None]
            for t in idle:
                t.cancel()
            if idle:
                await asyncio.wait(idle)
            # Busy workers finish their handler, settle its message, then exit.
            busy = [
                w.task for w in self._workers
                if w.task is not None and w.task is not current and not w.task.done()
            ]
            if busy:
                _, late = await asyncio.wait(busy, timeout=drain_timeout)
                if late:
                    log.warning(
                        "consumer %r on %s: %d handlers still running after %ss; cancelled, "
                        "their messages will be redelivered",
                        self.subscription, self.topic, len(late), drain_timeout,
                    )
                    for t in late:
                        t.cancel()
                    await asyncio.wait(late)
            if self._dlq is not None:
                try:
                    await self._dlq.close()
                except PubSubError as exc:
                    log.warning("closing dead-letter producer for %s: %s", self.topic, exc)
            bc, self._bc = self._bc, None
            if bc is not None:
                try:
                    if unsubscribe:
                        await bc.unsubscribe()
                    else:
                        await bc.close()
                except (BrokerConnectionError, ClosedError) as exc:
                    log.warning(
                        "consumer %r on %s: %s on close (the broker keeps the subscription)",
                        self.subscription, self.topic, exc,
                    )
        finally:
            if self.ephemeral:
                # Its subscription is gone with it: so is its label set.
                self._metrics_source.release(*self._labels)
            self._stopped.set()

    async def run(self) -> None:
        """``start``, then wait until stopped; cancelling ``run`` stops the consumer."""
        await self.start()
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self.stop())
            raise


    @property
    def running(self) -> bool:
        return self._started and not self._stopping

    # -- the workers --------------------------------------------------------

    async def _work(self, me: _Worker) -> None:
        """Take the turn, receive, run the handler inline; until stopped."""
        loop = asyncio.get_running_loop()
        handoff = self.concurrency > 1
        call_soon, nudge = loop.call_soon, self._nudge
        handler = self.handler
        m = self._m
        cells, bounds = m.inline()  # m.received() and m.latency(), inline (see there)
        buckets, first_bound = cells.buckets, bounds[0]
        max_redeliveries = self.max_redeliveries
        task = asyncio.current_task()
        # When the message in hand began (the latency clock): a message taken
        # without waiting begins when the one before it ended, so a message
        # costs one clock read, not two, and its latency takes in its receive
        # and decode.  After any wait (a fetch, the turn, a yield) the clock is
        # read again, so idle time is never latency.  Reading the clock at both
        # ends, with a bisect per message, cost 0.55 us a message (Kafka,
        # stubbed client); one read and a first-bucket test cost 0.27 us.
        started = slice_end = _clock()
        slice_end += _SLICE
        # The backend consumer's plain calls, where it has them (``NowaitConsumer``):
        # looked up again only when a reconnect replaced it.
        known: BackendConsumer | None = None
        take: Callable[[], Message | None] | None = None
        ack_now: Callable[[Message], None] | None = None
        try:
            while not self._stopping:
                turn = self._turn
                if turn is None or (turn is not me and turn.busy):
                    # Free, or its holder is in a handler and so not receiving.
                    self._turn = me
                elif turn is not me:
                    fut: asyncio.Future[None] = loop.create_future()
                    self._idle.append((me, fut))
                    await fut  # _pass_turn made us the holder
                    if self._stopping:
                        break
                    started = slice_end = _clock()
                    slice_end += _SLICE
                elif started >= slice_end:
                    await asyncio.sleep(0)
                    started = slice_end = _clock()
                    slice_end += _SLICE
                    continue  # stop() may have come meanwhile
                bc = self._bc
                assert bc is not None
                if bc is not known:
                    known = bc
                    take = getattr(bc, "receive_nowait", None)
                    ack_now = getattr(bc, "acknowledge_nowait", None)
                try:
                    msg = take() if take is not None else None
                    if msg is None:
                        msg = await bc.receive()
                        started = _clock()
                except PubSubTimeoutError:
                    # No timeout was asked for, but a backend may time out a long poll.
                    started = _clock()
                    continue
                except Exception as exc:
                    await self._reconnect(bc, exc)
                    started = _clock()
                    continue
                me.busy = True
                # The message, inline (a coroutine per message costs).  Nothing
                # may be awaited before the handler is called: Subscriber
                # relies on handlers starting in receive order.
                try:
                    cells.messages += 1
                    try:
                        msg.value()
                    except MessageDecodeError as exc:
                        await self._undecodable(bc, msg, exc)
                        started = _clock()
                        continue
                    if msg.redelivery_count > max_redeliveries:
                        await self._overdelivered(bc, msg)
                        started = _clock()
                        continue
                    try:
                        pending = handler(msg)
                        if pending is not None:
                            if handoff and not self._nudge_pending:
                                # Should the handler wait, the loop runs this then, and
                                # the turn passes on; one per loop pass is enough.
                                self._nudge_pending = True
                                call_soon(nudge)
                            await pending
                    except Exception as exc:
                        m.latency(_clock() - started)
                        await self._failed(bc, msg, exc)
                        started = _clock()
                        continue
                    except asyncio.CancelledError as exc:
                        if task is None or task.cancelling():
                            raise  # stop() cancelled us: leave the message unacked
                        # The handler's own (it awaited something cancelled): a failure
                        # like any other, and this worker lives on.
                        m.latency(_clock() - started)
                        await self._failed(bc, msg, exc)
                        started = _clock()
                        continue
                    now = _clock()
                    took = now - started
                    started = now
                    # (Prometheus buckets are "less than or equal", as bisect_left finds
                    # them; most handlers end within the first, so it is tried first.)
                    buckets[0 if took <= first_bound else bisect_left(bounds, took)] += 1
                    cells.seconds += took
                    if ack_now is not None:
                        ack_now(msg)
                    else:
                        await bc.acknowledge(msg)
                        started = _clock()
                except (BrokerConnectionError, ClosedError) as exc:
                    # The consumer this message came from is gone; the broker redelivers it.
                    log.debug(
                        "ack/nack on %s lost (%s); the message will be redelivered",
                        self.topic, exc,
                    )
                    started = _clock()  # (settling may have waited)
                except Exception:
                    log.exception(
                        "consumer %r on %s: error settling a message",
                        self.subscription, self.topic,
                    )
                    started = _clock()
                finally:
                    me.busy = False
        finally:
            if self._turn is me:
                self._pass_turn()

    def _nudge(self) -> None:
        """Run by the loop, so every worker is suspended: a holder still in its
        handler is waiting, and gives up the turn."""
        self._nudge_pending = False
        holder = self._turn
        if holder is not None and holder.busy:
            self._pass_turn()

    def _pass_turn(self) -> None:
        idle = self._idle
        while idle:
            worker, fut = idle.popleft()
            if not fut.done():  # (a worker cancelled while waiting leaves a done future)
                self._turn = worker
                fut.set_result(None)
                return
        self._turn = None

    async def _reconnect(self, old: BackendConsumer, exc: Exception) -> BackendConsumer:
        if isinstance(exc, (BrokerConnectionError, ClosedError)):
            log.warning(
                "consumer %r on %s lost its connection (%s); reconnecting",
                self.subscription, self.topic, exc,
            )
        else:
            log.error(
                "consumer %r on %s: unexpected receive error; reconnecting",
                self.subscription, self.topic, exc_info=exc,
            )
        with contextlib.suppress(Exception):
            await old.close()
        while True:
            await self._backoff.sleep()
            try:
                bc = await self._create(None)
            except Exception as cexc:
                # Not a connection error (bad credentials, closed backend ...):
                # keep the service up and keep trying, loudly.
                log.error(
                    "consumer %r on %s cannot resubscribe: %s: %s",
                    self.subscription, self.topic, type(cexc).__name__, cexc,
                )
                continue
            self._bc = bc
            self._m.reconnected()
            return bc

    def __repr__(self) -> str:
        return (
            f"<Consumer topic={self.topic!r} subscription={self.subscription!r} "
            f"concurrency={self.concurrency} running={self.running}>"
        )
