"""``ConfigClient``: get, put, list and delete entries of the config service.

The config service stores ``(workspace, type, key) -> value`` (values are
JSON text by convention, but any string goes) under one global version.
Every answer carries the version of the snapshot it was read at, and every
write returns the version it created; the client keeps the latest one seen
in ``version``.

A missing key is not an error: ``get`` returns None.  A service ``Error``
raises ``ServiceError`` (``.type`` says which: ``bad-request``,
``bad-operation``, ``unavailable`` ...); no reply within ``timeout`` seconds
raises ``PubSubTimeoutError``.  Writes are atomic: ``put_many`` with
``delete=`` puts and deletes in one version, with one push.

Answers too large for one message (a big workspace, a type across many
workspaces) come as several messages and are merged here, so a caller
never meets a broker's message size limit.
"""

from __future__ import annotations

from collections.abc import Iterable

from trustgraph_schema.services.config import (
    ConfigKey,
    ConfigRequest,
    ConfigResponse,
    ConfigValue,
    config_request_queue,
    config_response_queue,
)

from .backend import PubSubBackend
from .errors import ServiceError
from .metrics import Metrics
from .service_client import ServiceClient

__all__ = ["ConfigClient"]


class ConfigClient(ServiceClient[ConfigRequest, ConfigResponse]):
    """The config service's client; use as ``async with ConfigClient(backend) as config``."""

    service = "config service"

    def __init__(
        self,
        backend: PubSubBackend,
        *,
        timeout: float = 10.0,
        request_topic: str = config_request_queue,
        response_topic: str = config_response_queue,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(
            backend, request_topic, ConfigRequest, response_topic, ConfigResponse,
            timeout=timeout, metrics=metrics,
        )
        #: the newest store version an answer carried
        self.version = 0

    def ping_request(self) -> ConfigRequest:
        return ConfigRequest(operation="list", workspace="__system__", type="ping")

    def merge(self, into: ConfigResponse, part: ConfigResponse) -> None:
        if part.values:
            into.values = (into.values or []) + part.values
        if part.directory:
            into.directory = (into.directory or []) + part.directory
        if part.config:
            merged = into.config if into.config is not None else {}
            for type_, entries in part.config.items():
                merged.setdefault(type_, {}).update(entries)
            into.config = merged

    async def call(self, request: ConfigRequest, *, timeout: float | None = None) -> ConfigResponse:  # noqa: ASYNC109
        response = await super().call(request, timeout=timeout)
        if response.version is not None and response.version > self.version:
            self.version = response.version
        return response

    # -- reads ----------------------------------------------------------------

    async def get(self, workspace: str, type: str, key: str) -> str | None:
        """The value, or None when there is no such entry."""
        r = await self.call(ConfigRequest(
            operation="get", workspace=workspace, keys=[ConfigKey(type, key)]
        ))
        for v in r.values or ():
            if v.type == type and v.key == key:
                return v.value
        return None

    async def get_many(self, workspace: str, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """``{(type, key): value}`` for the keys that exist."""
        r = await self.call(ConfigRequest(
            operation="get", workspace=workspace, keys=[ConfigKey(t, k) for t, k in keys]
        ))
        return {(v.type, v.key): v.value for v in r.values or ()}

    async def keys(self, workspace: str, type: str) -> list[str]:
        """The keys of ``type`` in ``workspace``, sorted."""
        r = await self.call(ConfigRequest(operation="list", workspace=workspace, type=type))
        return list(r.directory or [])

    async def values(self, workspace: str, type: str) -> dict[str, str]:
        """``{key: value}`` of ``type`` in ``workspace``."""
        r = await self.call(ConfigRequest(operation="getvalues", workspace=workspace, type=type))
        return {v.key: v.value for v in r.values or ()}

    async def values_all_workspaces(
        self, type: str, *, timeout: float | None = None  # noqa: ASYNC109
    ) -> dict[str, dict[str, str]]:
        """``{workspace: {key: value}}`` of ``type`` in every workspace that has it."""
        r = await self.call(ConfigRequest(operation="getvalues-all-ws", type=type), timeout=timeout)
        out: dict[str, dict[str, str]] = {}
        for v in r.values or ():
            out.setdefault(v.workspace or "", {})[v.key] = v.value
        return out

    async def workspaces_for_type(self, type: str) -> list[str]:
        """The workspaces that hold at least one entry of ``type``, sorted."""
        r = await self.call(ConfigRequest(operation="getkeys-all-ws", type=type))
        return sorted({v.workspace or "" for v in r.values or ()})

    async def get_all(self, workspace: str) -> dict[str, dict[str, str]]:
        """The whole workspace: ``{type: {key: value}}``."""
        r = await self.call(ConfigRequest(operation="config", workspace=workspace))
        return r.config or {}

    # -- writes ---------------------------------------------------------------

    async def put(self, workspace: str, type: str, key: str, value: str) -> int:
        """Set one entry; the new version."""
        return await self.put_many(workspace, [(type, key, value)])

    async def put_many(
        self,
        workspace: str,
        values: Iterable[tuple[str, str, str]],
        *,
        delete: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Set ``(type, key, value)`` entries and delete ``(type, key)`` ones in one
        write: one version, one push.  The new version."""
        r = await self.call(ConfigRequest(
            operation="put",
            workspace=workspace,
            values=[ConfigValue(t, k, v) for t, k, v in values],
            keys=[ConfigKey(t, k) for t, k in delete] or None,
        ))
        return _version(r)

    async def write(
        self,
        puts: Iterable[tuple[str, str, str, str]],
        deletes: Iterable[tuple[str, str, str]] = (),
    ) -> int:
        """Put ``(workspace, type, key, value)`` and delete ``(workspace, type, key)``
        entries of any workspaces in one write (one version, at most one push).
        The new version."""
        values = [ConfigValue(t, k, v, workspace=w) for w, t, k, v in puts]
        keys = [ConfigKey(t, k, workspace=w) for w, t, k in deletes]
        first = (values[0].workspace if values else keys[0].workspace if keys else None)
        if first is None:
            raise ValueError("write needs at least one entry to put or delete")
        r = await self.call(ConfigRequest(operation="put", workspace=first, values=values or None,
                                          keys=keys or None))
        return _version(r)

    async def delete(self, workspace: str, type: str, key: str) -> int:
        """Delete one entry (missing is not an error); the new version."""
        return await self.delete_many(workspace, [(type, key)])

    async def delete_many(self, workspace: str, keys: Iterable[tuple[str, str]]) -> int:
        """Delete ``(type, key)`` entries in one write; the new version."""
        r = await self.call(ConfigRequest(
            operation="delete", workspace=workspace, keys=[ConfigKey(t, k) for t, k in keys]
        ))
        return _version(r)

    def __repr__(self) -> str:
        return f"<ConfigClient version={self.version}>"


def _version(r: ConfigResponse) -> int:
    if r.version is None:
        raise ServiceError("config service", "bad-response", "a write was answered without a version")
    return r.version
