"""``QueueTopology``: the control plane's own queues, on whichever broker is configured."""

from __future__ import annotations

from typing import Any, ClassVar

from trustgraph_schema import config_request_queue, flow_request_queue

from ..config_service.service import ConfigService
from ..flow_service.service import FlowService
from ..initialiser import InitContext, Initialiser, InitialiserError

__all__ = ["QueueTopology"]

#: (topic, subscription) of every request queue a control-plane service reads
CONTROL_QUEUES = (
    (config_request_queue, ConfigService.subscription),
    (flow_request_queue, FlowService.subscription),
)


class QueueTopology(Initialiser):
    """Ensure the config and flow request queues before the services start.

    A request published before a service ever subscribed would otherwise be
    lost where queues appear on first subscription.  Broker-neutral: it calls
    ``ensure_queue`` on the configured backend.  Where the backend has no
    explicit queue lifecycle (``Capabilities.queue_lifecycle`` False: MQTT,
    whose queues are client sessions that only their consumers may hold, and
    Pulsar without an admin URL) there is nothing to create safely, and it
    says so and succeeds.  Runs before the gate.

    params: ``queues`` (optional): a list of ``[topic, subscription]`` to
    ensure as well.
    """

    wait_for_services: ClassVar[bool] = False

    def __init__(self, queues: Any = None) -> None:
        extra = queues or []
        if not isinstance(extra, list) or not all(
            isinstance(q, list) and len(q) == 2 and all(isinstance(x, str) for x in q) for q in extra
        ):
            raise TypeError("param 'queues' must be a list of [topic, subscription]")
        self.queues = [*CONTROL_QUEUES, *((t, s) for t, s in extra)]

    async def run(self, ctx: InitContext, old_flag: str | None, new_flag: str) -> None:
        if not ctx.backend.capabilities.queue_lifecycle:
            ctx.log.info("the %s backend makes queues when consumers subscribe; nothing to create",
                         ctx.backend.name)
            return
        for topic, subscription in self.queues:
            try:
                await ctx.backend.ensure_queue(topic, subscription)
            except Exception as exc:
                raise InitialiserError(
                    f"cannot ensure queue {subscription!r} on {topic}: {type(exc).__name__}: {exc}"
                ) from exc
        ctx.log.info("ensured %d queue(s)", len(self.queues))
