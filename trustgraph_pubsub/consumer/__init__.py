"""``Consumer``: a handler loop over one subscription that never crashes.

Per message:

1. ``msg.value()`` is decoded first; bytes that do not decode go to the
   dead-letter topic at once (retrying cannot fix them).
2. The handler runs (an async function, or a plain one that returns None).
   Success acknowledges the message.
3. A handler exception negatively acknowledges it (the broker redelivers),
   unless it has already been redelivered ``max_redeliveries`` times: then it
   is dead-lettered.  A message that arrives with a count already above the
   limit (its earlier deliveries were never settled: a handler that crashes the
   process, counted where the broker can) is dead-lettered without running
   the handler again.  A handler therefore sees a poison message at most
   ``max_redeliveries + 1`` times, and the stream behind it keeps flowing.

Dead-lettering sends the original bytes, with the original properties plus
``x-dlq-error``, ``x-dlq-error-type``, ``x-dlq-topic``,
``x-dlq-subscription`` and ``x-dlq-deliveries``, to ``<queue>.dlq``; only
once that send is flushed is the original acknowledged.  If the dead-letter
send fails, the original is nacked instead, so nothing is lost.

At most ``concurrency`` handlers run at once.  ``prefetch`` (how many
messages the broker may push ahead of acks) is its own option, by default
``DEFAULT_PREFETCH`` (100): with ``concurrency=1`` a prefetch of one would
cost a broker round trip per message.  It is never below ``concurrency``
(each handler needs a message), and it bounds what a consumer holds in
memory to ``prefetch`` messages.  A lost connection (``ConnectionLostError`` or
``BrokerConnectionError`` from the backend consumer) closes the backend
consumer and recreates it with jittered backoff; handlers still running
finish, and their acks to the dead consumer are dropped (the broker
redelivers those messages, so delivery is at least once).

``stop`` stops receiving, lets in-flight handlers finish (and be acked),
then closes the backend consumer.  It never unsubscribes unless asked:
the subscription is durable.

``ephemeral=True`` asks the backend for an ephemeral subscription
(``create_consumer(..., ephemeral=True)``): it belongs to this consumer and
the broker deletes it when the consumer closes or its connection dies, so a
crashed process leaves nothing behind.  After a lost connection the
consumer recreates it, as a new, empty subscription: messages published
in between (and any it held unacked) may be missed.  When an ephemeral
consumer stops, its metrics label set is released (``Metrics.release``).

How it stays cheap per message: a task per message (plus a semaphore and a
done callback) cost more than the broker client's own receive and ack.
Instead ``concurrency`` long-lived worker tasks take turns at the backend
consumer.  The worker holding the *turn* receives a message and runs the
handler inline, in the same task.  Only if that handler actually waits
(the loop gets control back while it runs: a callback the worker scheduled,
one per loop pass, then finds it busy; or another worker comes back free)
does the turn pass to another worker, which then receives the next message.  A handler that
finishes without waiting therefore costs no task switch at all, and with
``concurrency=1`` the single worker simply loops.  Handlers start in receive order, since the next receive happens
only after the previous handler has started; ``Subscriber`` relies on it.

The package: ``loop.py`` has ``Consumer`` itself (its settings, ``start`` and
``stop``, the worker loop, reconnects); ``turns.py`` what the
workers take turns as (``_Worker``); ``dead_letter.py`` what
becomes of a message that fails (nack, or dead-letter), a mixin of
``Consumer``, so that the loop calls it as its own methods.
"""

from .dead_letter import DLQ_ERROR_MAX as DLQ_ERROR_MAX
from .loop import DEFAULT_PREFETCH as DEFAULT_PREFETCH
from .loop import Consumer, Handler

__all__ = ["Consumer", "Handler"]
