"""The in-process "broker": one ``MemoryHub`` owned by the fixture.

Every backend this fixture makes shares its hub, as clients of one real broker
share that broker; ``restart()`` is the hub's simulated restart (every open
client is dropped with ``ConnectionLostError``, q1 data is kept).  The hub is
created with the fixture and lives for the session: the battery's fresh names
keep tests apart, and its clean-up deletes each test's topics.

There is no network, so ``refused_config`` is not implemented and
``bad_credentials_config`` is None: the battery skips those sub-cases and
says why.
"""

from __future__ import annotations

from typing import Any, ClassVar

from trustgraph_pubsub import PubSubBackend
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub

from . import Broker


class MemoryBroker(Broker):
    name: ClassVar[str] = "memory"
    can_restart: ClassVar[bool] = True
    restart_keeps_data: ClassVar[bool] = True

    def __init__(self) -> None:
        self.hub = MemoryHub()

    def make_backend(self, **overrides: Any) -> PubSubBackend:
        """A backend on this fixture's hub.

        The memory backend has no options, so ``get_pubsub`` keys in
        ``overrides`` have nothing to act on; anything else is a test bug.
        """
        unknown = sorted(k for k in overrides if not k.startswith(("memory_", "pubsub_backend")))
        if unknown:
            raise ValueError(f"memory backend has no options {unknown}")
        return MemoryBackend(hub=self.hub)

    async def restart(self, kill: bool = False) -> None:
        await self.hub.restart()
