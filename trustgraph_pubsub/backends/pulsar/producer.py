"""The Pulsar producer: pipelined sends, and finding out about the ones the
client fails without a callback per message (see "Sends are pipelined" in the
package docstring).

Over 500 lines because it is one class whose window, probes, watch flush and
reading of the client's sequence id all guard the same counters and kept
messages: split up, each part would reach into the others' state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import _pulsar  # type: ignore[import-not-found]  # pulsar-client's C extension

from ...backend import check_properties, encode_payload
from ...errors import ClosedError, MessageTooLargeError, Outgoing, PubSubError
from .config import _RELEASE_PAUSE, _YIELD_EVERY, WATCH_DELAY
from .connection import _LoopCallback, _resolve, _retrieve, _settle
from .errors import _R

if TYPE_CHECKING:
    from . import PulsarBackend

log = logging.getLogger(__name__)


def _size(data: bytes, props: dict[str, str] | None, key: str | None) -> int:
    """A message's size as the broker counts it against ``maxMessageSize``."""
    size = len(data)
    if props:
        size += sum(len(k.encode()) + len(v.encode()) + 8 for k, v in props.items())
    if key is not None:
        size += len(key.encode()) + 8
    return size


def _build(data: bytes, props: dict[str, str] | None, key: str | None) -> Any:
    """The client's message."""
    builder = _pulsar.MessageBuilder()
    builder.content(data)
    if props:
        for k, v in props.items():
            builder.property(k, v)
    if key is not None:
        builder.partition_key(key)
    return builder.build()


def _outgoing(kept: Any) -> Outgoing:
    """A kept message (see ``PulsarProducer._unconfirmed``) as ``Producer`` sends it again."""
    if type(kept) is tuple:
        msg, props, key = kept
        return (msg.data(), props, key)
    return (kept.data(), None, None)


class PulsarProducer:
    """A producer on one topic; see the package docstring for how sends are pipelined
    and how a message the client refuses or gives up on is reported."""

    def __init__(
        self,
        backend: PulsarBackend,
        topic: str,
        native: str,
        schema: type[Any] | None,
        producer: Any,
        *,
        confirm: bool,
        max_payload: int | None,
        window: int,
        window_bytes: int,
        batch_bytes: int | None,
    ) -> None:
        self.topic = topic
        self.native = native
        self._backend = backend
        self._schema = schema
        self._producer = producer
        self._raw = producer._producer
        self._confirm = confirm
        self._max_payload = max_payload
        self._window = window
        self._window_bytes = window_bytes
        self._batch_bytes = batch_bytes  # None: batching off
        self._loop = asyncio.get_running_loop()
        self._cb = _LoopCallback(self._loop)
        self._sent = 0
        self._sent_bytes = 0
        self._flushed = 0
        self._flushed_bytes = 0
        #: pipelined messages not yet confirmed, oldest first (``_sent - _flushed`` of
        #: them): a failure hands them to ``Producer`` to send again.  Each is kept
        #: as the client's built message (with its properties and key, as a tuple,
        #: when it has either), whose payload the client holds at its exact size
        #: anyway; the encoder's bytes carry kilobytes of allocation slack (orjson),
        #: about 80 MB over a full window of 1 KiB messages.
        self._unconfirmed: deque[Any] = deque()
        #: ``_sent_bytes`` as each of them was sent: the byte window's marks
        self._ends: deque[int] = deque()
        self._window_flush: asyncio.Future[None] | None = None
        self._error: PubSubError | None = None
        self._reported = False  # whether ``_error`` has reached the caller
        self._closed = False
        self._calls = 0
        # The client numbers the messages it accepts one by one from here (its
        # sequence ids), and ``last_sequence_id()`` is the newest the broker
        # confirmed: see ``_poll``.
        self._seq0: int = self._raw.last_sequence_id()
        #: set on the client's thread by a flush or probe callback that reports a
        #: failure: from then on ``_poll`` credits nothing
        self._alarm = False
        # The watch: one background flush while sends are unconfirmed (see ``_watch``).
        self._watch_timer: asyncio.TimerHandle | None = None
        self._watching = False
        self._unwatched_at: float | None = None  # first send no issued flush covers
        self._send_timeout = backend.send_timeout_ms / 1000
        # Sizes up to this go without a callback (see ``send``): what this backend's
        # broker has already confirmed, and with batching at least a batch.  A message
        # no larger than a batch makes no frame larger than the batches of small
        # messages every producer sends unprobed, so probing it proves nothing; and
        # a batched probe stalls the producer for a batch delay and a round trip
        # (15-16 ms measured), which at 35k msg/s in a fresh process (8 probes as
        # the counter in a message grew a digit) put the paced p99 at 58-86 ms.
        self._probe_upto = max(backend._proven_size, batch_bytes or 0)
        self._in_send = False
        self._refused: Any = None  # a result the client called back with inside send_async
        #: a batched probe the client has not answered: no call into the producer meanwhile
        self._quiet: asyncio.Future[Any] | None = None

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"producer for {self.topic} is closed; create a new one")
        if self._error is not None:
            self._reported = True
            raise self._error

    def _failure(self, result: Any) -> BaseException:
        return self._backend._client_error(result, f"send to {self.topic}", after_connect=True)

    def _fail(self, result: Any, *, announce: bool) -> PubSubError:
        """Mark the producer failed by the client's ``result``; every later call raises it.

        The client fails pipelined messages without telling anyone but the
        callbacks it holds, so the error counts every message not yet
        confirmed as possibly lost.  ``announce`` logs it at once: for failures
        found in the background, which no caller may ask about for a while.
        """
        if self._error is None:
            lost = self._sent - self._flushed
            base = self._backend._client_error(result, f"send to {self.topic}", after_connect=True)
            self._error = type(base)(
                f"{base}; up to {lost} message(s) sent since the last confirmed flush may not "
                "have reached the broker"
            )
            self._error.unconfirmed = tuple(map(_outgoing, self._unconfirmed))
            self._unconfirmed.clear()
            self._ends.clear()
            if self._watch_timer is not None:
                self._watch_timer.cancel()
                self._watch_timer = None
            if announce:
                log.warning("Pulsar producer for %s failed: %s", self.topic, self._error)
        return self._error

    async def send(
        self,
        message: Any,
        properties: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        if self._closed or self._error is not None:
            self._check()
        data = encode_payload(self._schema, message, self.topic)
        props = check_properties(properties, self.topic) if properties else None
        size = len(data) if props is None and key is None else _size(data, props, key)
        if self._max_payload is not None and size > self._max_payload:
            raise MessageTooLargeError(
                f"message of {size} bytes (payload and properties) for {self.topic} exceeds "
                f"the {self._max_payload} bytes Pulsar accepts (broker maxMessageSize less "
                "16 KiB of metadata); create the producer with chunking=True, or raise "
                "--pulsar-max-message-size together with the broker's maxMessageSize"
            )
        msg = _build(data, props, key)
        if self._confirm:
            fut: asyncio.Future[None] = self._loop.create_future()
            cb = self._cb
            self._raw.send_async(
                msg, lambda result, _id: cb.call(_settle, fut, self._failure, result)
            )
            await fut
            return
        # Take a slot in the window before the client gets the message: checked
        # after sending, concurrent senders could overrun the client's queue,
        # which refuses the excess (ProducerQueueIsFull) to callbacks nobody holds.
        while self._quiet is not None:
            await asyncio.shield(self._quiet)
        if self._closed or self._error is not None:
            self._check()
        if self._window_full():
            self._poll()
        while self._window_full():
            await self._flush_window()
            if self._closed or self._error is not None:
                self._check()
        self._enter(msg, props, key, size)
        if size > self._probe_upto:
            self._probe_upto = max(self._probe_upto, self._backend._proven_size)
        if size > self._probe_upto:
            await self._probe(msg, size, len(data))
        else:
            # No callback: the client's rate drops about fivefold with one per
            # message.  What the client may still fail is caught by the window
            # flush, the watch, or (for a size the broker might refuse) a probe.
            self._raw.send_async(msg, None)
        if self._unwatched_at is None:
            self._note_unwatched()
        self._calls += 1
        if self._calls >= _YIELD_EVERY:
            self._calls = 0
            self._poll()
            await asyncio.sleep(0)

    def send_nowait(
        self, data: bytes, properties: Mapping[str, str] | None = None, key: str | None = None
    ) -> bool:
        """``send`` of encoded ``data`` as a plain call (``NowaitProducer``).

        False, having done nothing, when ``send`` has more to do than hand
        the message to the client: raise a failure, confirm a q2 send, wait
        for a probe or the window, probe a new largest size, refuse a
        message too large, or yield (every ``_YIELD_EVERY`` calls).
        """
        if (
            self._calls + 1 >= _YIELD_EVERY
            or self._closed
            or self._error is not None
            or self._confirm
            or self._quiet is not None
            or self._window_full()
        ):
            return False
        props = check_properties(properties, self.topic) if properties else None
        size = len(data) if props is None and key is None else _size(data, props, key)
        if size > self._probe_upto or (self._max_payload is not None and size > self._max_payload):
            return False
        msg = _build(data, props, key)
        self._enter(msg, props, key, size)
        self._raw.send_async(msg, None)
        if self._unwatched_at is None:
            self._note_unwatched()
        self._calls += 1
        return True

    def _window_full(self) -> bool:
        return (
            self._sent - self._flushed >= self._window
            or self._sent_bytes - self._flushed_bytes >= self._window_bytes
        )

    def _enter(self, msg: Any, props: dict[str, str] | None, key: str | None, size: int) -> None:
        """Count a message into the window, and keep it until the broker confirms it."""
        self._sent += 1
        self._sent_bytes += size
        self._unconfirmed.append(msg if props is None and key is None else (msg, props, key))
        self._ends.append(self._sent_bytes)

    # -- finding out about failed sends without a callback per message --------

    async def _probe(self, msg: Any, size: int, length: int) -> None:
        """Send with a callback a message larger than any this broker has confirmed.

        The client refuses a message larger than the broker's own limit
        (MessageTooBig: the broker's maxMessageSize is below
        ``--pulsar-max-message-size``) to its callback alone, and later
        messages still succeed, so no flush would notice.  Sizes up to a
        confirmed one need no callback; the first message of each new largest
        size (one at a time per producer) gets one.

        The client refuses such a message before ``send_async`` returns.  When
        it travelled alone (batching off, or too big to share a batch) only it
        is lost: this send raises and the producer carries on.  Otherwise
        messages batched with it went too, and the producer fails.

        A batched probe is waited for, and nothing on this producer calls into
        the client until it is answered.  The client's own thread closes a
        batch holding the producer's mutex and then needs the GIL for the
        Python callback in it; a call such as ``send_async`` or
        ``flush_async`` made meanwhile from the loop holds the GIL while it
        waits for that mutex, and both threads would wait forever (seen as
        a hung ``flush``).  Probes are rare (a new largest size), so the wait
        of one batch delay costs little.
        """
        previous, self._probe_upto = self._probe_upto, size
        cb = self._cb
        answered: asyncio.Future[Any] = self._loop.create_future()

        def probed(result: Any) -> None:
            self._probed(result, size)
            _resolve(answered, result)

        def heard(result: Any, _id: Any) -> None:
            self._heard(result)
            cb.call(probed, result)

        self._in_send = True
        try:
            self._raw.send_async(msg, heard)
        finally:
            self._in_send = False
        result, self._refused = self._refused, None
        if result is None:
            if self._batch_bytes is None or answered.done():
                return
            gate = self._quiet = self._loop.create_future()
            try:
                async with asyncio.timeout(self._flush_bound()):
                    await asyncio.shield(answered)
                # The client's thread still drops its reference to the callback
                # (which takes the GIL too): let it, before anyone calls in.
                await asyncio.sleep(_RELEASE_PAUSE)
            except TimeoutError:
                log.warning("Pulsar gave no answer to a send to %s within %.0fs",
                            self.topic, self._flush_bound())
                raise self._fail(_R.Timeout, announce=False) from None
            finally:
                self._quiet = None
                gate.set_result(None)
            if self._error is not None:
                self._reported = True
                raise self._error
            return
        if self._batch_bytes is None or length >= self._batch_bytes:
            self._sent -= 1
            self._sent_bytes -= size
            self._unconfirmed.pop()
            self._ends.pop()
            self._probe_upto = previous
            raise self._backend._client_error(result, f"send to {self.topic}", after_connect=True)
        self._reported = True
        raise self._fail(result, announce=False)

    def _probed(self, result: Any, size: int) -> None:
        if result == _R.Ok:
            if size > self._backend._proven_size:
                self._backend._proven_size = size
        elif self._in_send:
            self._refused = result  # inline, inside ``_probe``: it decides
        elif not self._closed:
            self._fail(result, announce=True)

    def _note_unwatched(self) -> None:
        """The first send since the last watch flush was issued: make sure one follows."""
        self._unwatched_at = self._loop.time()
        if not self._watching and self._watch_timer is None:
            self._watch_timer = self._loop.call_later(WATCH_DELAY, self._watch)

    def _watch(self) -> None:
        """Issue the background flush that watches pipelined sends.

        The client fails every pending message at once when the oldest
        outlives ``send_timeout_ms`` (or when the broker refuses the producer
        on a reconnect), reporting it only to callbacks; a flush issued later
        finds an empty queue and succeeds.  So while messages are unconfirmed
        one flush is kept attached to the newest: its failure is theirs.  It
        is issued ``WATCH_DELAY`` after the first unwatched send, which keeps
        batches whole and costs one callback per interval, not per message.
        """
        self._watch_timer = None
        if self._closed or self._error is not None or self._watching:
            return
        if self._quiet is not None:  # see _probe: no client call until it is answered
            self._watch_timer = self._loop.call_later(WATCH_DELAY, self._watch)
            return
        self._poll()
        if self._sent == self._flushed:
            self._unwatched_at = None
            return
        mark = self._sent
        self._watching = True
        self._unwatched_at = None
        cb = self._cb

        def heard(result: Any) -> None:
            self._heard(result)
            cb.call(self._watched, result, mark)

        self._raw.flush_async(heard)

    def _watched(self, result: Any, mark: int) -> None:
        self._watching = False
        if self._closed:
            return
        if result != _R.Ok:
            self._fail(result, announce=True)
            return
        self._confirmed(mark)
        if self._unwatched_at is not None and self._error is None:
            # Sends arrived meanwhile: watch them too, well before the oldest can time out.
            delay = WATCH_DELAY
            if self._send_timeout > 0:
                due = self._unwatched_at + self._send_timeout / 2 - self._loop.time()
                delay = max(0.0, min(delay, due))
            self._watch_timer = self._loop.call_later(delay, self._watch)

    def _confirmed(self, mark: int) -> None:
        """The broker has the first ``mark`` messages: let go of them."""
        if mark > self._flushed:
            n = min(mark - self._flushed, len(self._ends))
            if n:
                done, end = self._unconfirmed.popleft, self._ends.popleft
                for _ in range(n - 1):
                    done()
                    end()
                done()
                self._flushed_bytes = end()
            self._flushed = mark

    def _poll(self) -> None:
        """Credit what the broker confirmed, read from the client's sequence id.

        The client numbers the messages it accepts in the order they are
        sent, from ``_seq0 + 1``, and keeps the number of the newest one the
        broker confirmed; reading it costs no callback.  So confirmed
        messages are let go of (and their window slots freed) while sends go
        on, not a watch flush later: holding every message for a watch
        interval (thousands at full rate, cold in the cache when freed) cost
        a quarter of the publishing rate.  A message the client refuses at
        once gets no number and is never counted here (see ``_probe``).

        After a failure the client numbers new messages past the failed
        ones, so a later confirmation would seem to cover them.  The flush
        or probe that reports the failure runs ``_heard`` on the client's
        thread, before the client handles anything later, and that stops
        this for good: the number is read first and the alarm checked
        after, so a number that covers a failure is never credited.  Each
        message unconfirmed for ``WATCH_DELAY`` is covered by a flush (the
        watch), so no failure goes unheard; ``_fail`` then hands back every
        message still kept.
        """
        last = self._raw.last_sequence_id()
        if self._alarm or self._error is not None:
            return
        done = last - self._seq0
        if done > self._flushed:
            self._confirmed(min(done, self._sent))

    def _heard(self, result: Any) -> None:
        """A flush or probe callback, on the client's thread: a failure stops ``_poll``.

        Not for a probe refused inside ``send_async`` (``_in_send``, on the
        loop's thread, which holds the GIL for the whole call, so no other
        thread's callback runs meanwhile): ``_probe`` settles that one.
        """
        if result != _R.Ok and not self._in_send:
            self._alarm = True

    # -- flushing -------------------------------------------------------------

    async def _flush_window(self) -> None:
        """One flush for every sender that found the window full."""
        if self._window_flush is None:
            self._window_flush = asyncio.ensure_future(self._flush())
            # Its error is also kept in ``_error``: waiters that were cancelled
            # must not leave it unretrieved.
            self._window_flush.add_done_callback(_retrieve)
        fut = self._window_flush
        try:
            await asyncio.shield(fut)
        finally:
            if self._window_flush is fut and fut.done():
                self._window_flush = None

    async def _flush(self) -> None:
        """Flush the client; on success every message sent before it is confirmed."""
        while self._quiet is not None:  # see _probe
            await asyncio.shield(self._quiet)
        mark = self._sent
        fut: asyncio.Future[Any] = self._loop.create_future()
        cb = self._cb

        def heard(result: Any) -> None:
            self._heard(result)
            cb.call(_resolve, fut, result)

        self._raw.flush_async(heard)
        bound = self._flush_bound()
        try:
            async with asyncio.timeout(bound):
                result = await fut
        except TimeoutError:
            # Every message the flush covers has outlived its send timeout,
            # yet the client never answered: count them as not confirmed
            # rather than wait forever (seen once under heavy load).
            log.warning("Pulsar gave no answer to a flush for %s within %.0fs", self.topic, bound)
            result = _R.Timeout
        if result != _R.Ok:
            self._reported = True
            raise self._fail(result, announce=False)
        if self._error is not None:  # a probe failed while the flush was under way
            self._check()
        self._confirmed(mark)

    def _flush_bound(self) -> float | None:
        """How long a flush may wait for the client: past every covered send's timeout."""
        if self._send_timeout <= 0:
            return None  # sends never time out, so neither does a flush
        return 2 * self._send_timeout + self._backend.operation_timeout + 5

    async def flush(self) -> None:
        """Wait until the broker confirmed every message sent so far."""
        self._check()
        if self._sent != self._flushed:
            self._poll()
        if self._sent == self._flushed:
            return
        await self._flush()

    async def close(self) -> None:
        """Flush, then close the producer.  Idempotent.

        A failed flush, or a failure found in the background that no call has
        raised yet, is raised after closing: messages may have been lost.
        """
        if self._closed:
            return
        flush_error: BaseException | None = None
        if self._error is None:
            try:
                await self.flush()
            except PubSubError as exc:
                flush_error = exc
        elif not self._reported:
            flush_error = self._error
        self._closed = True
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        self._backend._producers.discard(self)
        try:
            async with asyncio.timeout(self._backend.operation_timeout + 5):
                await self._producer.close()
        except Exception as exc:
            log.debug("closing producer for %s: %r", self.topic, exc)
        if flush_error is not None:
            self._reported = True
            raise flush_error

    def __repr__(self) -> str:
        return (
            f"<PulsarProducer topic={self.topic!r} native={self.native!r} "
            f"in_flight={self._sent - self._flushed} closed={self._closed}>"
        )
