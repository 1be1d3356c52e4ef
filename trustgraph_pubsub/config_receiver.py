"""``ConfigReceiver``: keep a process's view of some config types up to date.

Subscribe first, then fetch: ``start`` subscribes to config pushes (an
ephemeral subscription of its own: every receiver sees every push, and a
receiver that dies leaves nothing behind), then a background task fetches
every registered type across workspaces, retrying with backoff until the
config service answers.  ``ready`` is set after that first fetch.

Handlers are registered per config type with ``on(type, handler)`` and called
as ``handler(workspace, values, version)``, where ``values`` is the type's
whole ``{key: value}`` map in that workspace (``{}`` once the last entry is
gone) and ``version`` the store version that caused the call.  Only the
handlers of a push's changed types are called, once per changed workspace,
after fetching just that type in just that workspace.  A failing handler is
logged and does not stop the others (the next resync calls it again).

Every push names the version of the push before it (``previous``; writes
that touch only reserved workspaces take versions but are not pushed), so:

* a push whose version is not newer than what was applied is ignored;
* a push whose ``previous`` was applied is applied as above;
* a push whose ``previous`` was not applied (a push was missed), a failed
  fetch, or ``resync_interval`` seconds without a full fetch (a long
  silence, or anything else missed) triggers a full fetch of every
  registered type, which calls every handler.

After a full fetch the receiver's ``version`` is the oldest snapshot among
the answers, so a push between two of them is applied again rather than
skipped (a handler may see the same values twice; it never misses any).

Reserved workspaces (ids starting with ``_``) are never named in pushes and
are skipped by full fetches too: a receiver sees exactly the workspaces
that pushes can tell it about.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import string
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from trustgraph_schema.services.config import ConfigPush, config_push_queue

from .backend import Message, PubSubBackend
from .config_client import ConfigClient
from .consumer import Consumer
from .errors import PubSubError
from .lifecycle import Lifecycle
from .metrics import Metrics
from .retry import Backoff

log = logging.getLogger(__name__)

__all__ = ["ConfigHandler", "ConfigReceiver", "is_reserved"]

ConfigHandler = Callable[[str, dict[str, str], int], Awaitable[None] | None]

_SAFE = frozenset(string.ascii_letters + string.digits + "_.-")
#: the default period of full fetches (seconds).
RESYNC_INTERVAL = 300.0


def is_reserved(workspace: str) -> bool:
    """Reserved workspaces (``__template__``, ``__system__`` ...) start with ``_``."""
    return workspace.startswith("_")


class ConfigReceiver(Lifecycle):
    """Calls handlers with the current values of their config types, kept current."""

    def __init__(
        self,
        backend: PubSubBackend,
        *,
        client: ConfigClient | None = None,
        name: str = "receiver",
        resync_interval: float = RESYNC_INTERVAL,
        push_topic: str = config_push_queue,
        metrics: Metrics | None = None,
    ) -> None:
        if not resync_interval > 0:
            raise ValueError(f"resync_interval must be > 0 seconds, got {resync_interval!r}")
        self.backend = backend
        self._own_client = client is None
        self.client = client or ConfigClient(backend, metrics=metrics)
        self.resync_interval = float(resync_interval)
        self._handlers: dict[str, list[ConfigHandler]] = {}
        #: workspaces each type was last seen in, so an emptied one is reported as {}
        self._known: dict[str, set[str]] = {}
        self._pushes: asyncio.Queue[ConfigPush] = asyncio.Queue()
        self._consumer = Consumer(
            backend,
            push_topic,
            f"{_safe(name)}-{uuid.uuid4().hex[:12]}",
            ConfigPush,
            self._on_push,
            metrics=metrics,
            ephemeral=True,
        )
        self._task: asyncio.Task[None] | None = None
        #: the store version the handlers have seen everything up to
        self.version = 0
        #: set once the first full fetch has been delivered to the handlers
        self.ready = asyncio.Event()
        #: full fetches done (the first one included)
        self.full_fetches = 0

    def on(self, type: str, handler: ConfigHandler) -> None:
        """Call ``handler(workspace, values, version)`` for changes of ``type``."""
        if not isinstance(type, str) or not type:
            raise ValueError(f"config type must be a non-empty string, got {type!r}")
        self._handlers.setdefault(type, []).append(handler)

    async def start(self) -> None:
        """Subscribe to pushes, then start fetching in the background."""
        if self._task is not None:
            return
        if self._own_client:
            await self.client.start()
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"config-receiver:{self._consumer.subscription}")

    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait for the first full fetch (``TimeoutError`` after ``timeout``)."""
        async with asyncio.timeout(timeout):
            await self.ready.wait()

    async def stop(self) -> None:
        """Stop fetching and release the push subscription.  Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._consumer.stop()
        if self._own_client:
            await self.client.stop()


    async def _on_push(self, msg: Message) -> None:
        self._pushes.put_nowait(msg.value())

    def resync(self) -> None:
        """Ask for a full fetch now (for instance after a handler failed)."""
        self._pushes.put_nowait(ConfigPush(version=-1))

    # -- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        need_full = True
        next_full = 0.0
        # A request sent before the config service subscribed may be lost, so
        # the first attempts wait briefly, then longer (up to the client's timeout).
        attempt = min(1.0, self.client.timeout)
        while True:
            if need_full:
                try:
                    await self._full_fetch(attempt)
                except (PubSubError, TimeoutError) as exc:
                    delay = backoff.next_delay()
                    log.warning("config fetch failed (%s: %s); again in %.1fs",
                                type(exc).__name__, exc, delay)
                    attempt = min(attempt * 2, self.client.timeout)
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                attempt = min(1.0, self.client.timeout)
                need_full = False
                next_full = time.monotonic() + self.resync_interval
                self.ready.set()
            try:
                async with asyncio.timeout(max(0.0, next_full - time.monotonic())):
                    push = await self._pushes.get()
            except TimeoutError:
                log.debug("no full config fetch for %ss: resyncing", self.resync_interval)
                need_full = True
                continue
            if push.version == -1:
                need_full = True
                continue
            if push.version <= self.version:
                continue
            if push.previous > self.version:
                log.info("config push %d was missed (now at %d, have %d); fetching everything",
                         push.previous, push.version, self.version)
                need_full = True
                continue
            try:
                await self._apply(push)
            except (PubSubError, TimeoutError) as exc:
                log.warning("fetching config version %d failed (%s: %s); fetching everything",
                            push.version, type(exc).__name__, exc)
                need_full = True
                continue
            self.version = push.version

    async def _full_fetch(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        versions: list[int] = []
        fetched: dict[str, dict[str, dict[str, str]]] = {}
        for type_ in list(self._handlers):
            fetched[type_] = await self.client.values_all_workspaces(type_, timeout=timeout)
            versions.append(self.client.version)
        self.full_fetches += 1
        if not versions:
            return
        version = min(versions)
        for type_, by_ws in fetched.items():
            current = {ws for ws in by_ws if not is_reserved(ws)}
            for ws in sorted(current | self._known.get(type_, set())):
                await self._call(type_, ws, by_ws.get(ws, {}), version)
            self._known[type_] = current
        self.version = max(self.version, version)

    async def _apply(self, push: ConfigPush) -> None:
        for type_, workspaces in push.changes.items():
            if type_ not in self._handlers:
                continue
            for ws in workspaces:
                if is_reserved(ws):
                    continue
                values = await self.client.values(ws, type_)
                known = self._known.setdefault(type_, set())
                if values:
                    known.add(ws)
                else:
                    known.discard(ws)
                await self._call(type_, ws, values, push.version)

    async def _call(self, type_: str, workspace: str, values: dict[str, str], version: int) -> None:
        for handler in list(self._handlers.get(type_, ())):
            try:
                result: Any = handler(workspace, dict(values), version)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("config handler %r for type %r in workspace %r failed",
                              getattr(handler, "__qualname__", handler), type_, workspace)

    def __repr__(self) -> str:
        return f"<ConfigReceiver types={sorted(self._handlers)} version={self.version}>"


def _safe(name: str) -> str:
    """A subscription-safe form of ``name`` ([A-Za-z0-9_.-])."""
    out = "".join(c if c in _SAFE else "-" for c in name)
    return out[:40] or "receiver"
