"""The config service (console script ``config-svc``).

Stores ``(workspace, type, key) -> value`` entries (values are JSON text) in a
``ConfigStore`` and answers ``ConfigRequest``s on the config request queue:

=====================  =======================================================
``get``                ``workspace``, ``keys``: the values of the keys that
                       exist (a missing key gives no value, not an error)
``list``               ``workspace``, ``type``: the type's keys (``directory``)
``getvalues``          ``workspace``, ``type``: the type's entries
``getvalues-all-ws``   ``type``: its entries in every workspace (``workspace``
                       set on each value)
``getkeys-all-ws``     ``type``: its keys in every workspace (values ``""``)
``config``             ``workspace``: the whole workspace as ``{type: {key: value}}``
``put``                ``workspace``, ``values`` (and optionally ``keys`` to
                       delete in the same write)
``delete``             ``workspace``, ``keys``
=====================  =======================================================

Every answer carries the ``version`` of the snapshot it was read at.  Each
``put``/``delete`` request is one write (one transaction, even when its
entries name several workspaces): one new version, returned in the answer,
and one ``ConfigPush`` on the push queue naming the changed types and, for
each, the changed workspaces.  Reserved workspaces (ids starting with ``_``)
are stored and readable but never named, and a write that touched only
reserved workspaces is not pushed at all (DESIGN: "never broadcast"); each
push carries the version of the push before it (``previous``), so receivers
still detect a missed push exactly.  Writes and their pushes are serialised
within a replica, so one replica's pushes leave in version order.

Answers bigger than ``--max-answer-bytes`` are streamed as several partial
answers that ``ConfigClient`` merges (CONTROL_PLANE.md hazard 8), and a
single value that could not fit in one answer is refused at ``put``.

Stores: ``--config-store sqlite`` (default; ``--config-db PATH``, created on
first start) or ``--config-store postgres --postgres-dsn ...`` for several
replicas on one database.  Replicas share one subscription, so each request
is served once.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import orjson

from bootstrap.service import MAX_ANSWER_BYTES, OperationService, RequestError, require
from trustgraph_pubsub import Producer, PubSubError
from trustgraph_pubsub.config_receiver import is_reserved
from trustgraph_pubsub.processor import env_default
from trustgraph_schema import encode
from trustgraph_schema.services.config import (
    ConfigKey,
    ConfigPush,
    ConfigRequest,
    ConfigResponse,
    ConfigValue,
    config_push_queue,
    config_request_queue,
    config_response_queue,
)

from .postgres_store import PostgresStore, StoreUnavailable
from .sqlite_store import SqliteStore
from .store import ConfigStore

log = logging.getLogger(__name__)

__all__ = ["ConfigService", "main", "make_store"]

T = TypeVar("T")
DEFAULT_DB = "tg-config.db"
#: room for the envelope of a response around its values
_ENVELOPE = 256


def make_store(params: dict[str, Any]) -> ConfigStore:
    """The store the flags name: sqlite (``config_db``) or postgres (``postgres_dsn``)."""
    kind = params.get("config_store") or "sqlite"
    if kind == "sqlite":
        return SqliteStore(params.get("config_db") or DEFAULT_DB)
    if kind == "postgres":
        dsn = params.get("postgres_dsn")
        if not dsn:
            raise ValueError("--config-store postgres needs --postgres-dsn (env POSTGRES_DSN)")
        return PostgresStore(
            dsn,
            schema=params.get("postgres_schema") or "public",
            pool_size=int(params.get("postgres_pool_size") or 10),
        )
    raise ValueError(f"--config-store {kind!r}: expected sqlite or postgres")


def _text(value: Any, field: str) -> str:
    """A non-empty string without NUL (PostgreSQL refuses NUL in text)."""
    require(value, field)
    if "\x00" in value:
        raise RequestError("bad-request", f"{field} contains a NUL character")
    return str(value)


class ConfigService(OperationService):
    """The config store behind the config request queue, with pushes."""

    default_ident = "config-svc"
    request_topic = config_request_queue
    response_topic = config_response_queue
    request_schema = ConfigRequest
    response_schema = ConfigResponse
    subscription = "config-service"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.store: ConfigStore = params.get("store") or make_store(params)
        self.max_answer_bytes = int(params.get("max_answer_bytes") or MAX_ANSWER_BYTES)
        if self.max_answer_bytes < 4096:
            raise ValueError(f"--max-answer-bytes must be at least 4096, got {self.max_answer_bytes}")
        #: requests served, by (operation, type or "")
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        #: pushes sent (one per write)
        self.pushes = 0
        self._push: Producer | None = None
        self._write_lock = asyncio.Lock()
        self.operations = {
            "get": self.op_get,
            "list": self.op_list,
            "getvalues": self.op_getvalues,
            "getvalues-all-ws": self.op_getvalues_all_ws,
            "getkeys-all-ws": self.op_getkeys_all_ws,
            "config": self.op_config,
            "put": self.op_put,
            "delete": self.op_delete,
        }

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        super().add_args(parser)
        parser.add_argument(
            "--config-store", choices=("sqlite", "postgres"),
            default=env_default("CONFIG_STORE", "sqlite"),
            help="where entries are kept (env CONFIG_STORE, default sqlite)",
        )
        parser.add_argument(
            "--config-db", default=env_default("CONFIG_DB", DEFAULT_DB),
            help=f"SQLite file, created on first start (env CONFIG_DB, default {DEFAULT_DB})",
        )
        parser.add_argument(
            "--postgres-dsn", default=env_default("POSTGRES_DSN"),
            help="PostgreSQL connection string for --config-store postgres (env POSTGRES_DSN)",
        )
        parser.add_argument(
            "--postgres-schema", default=env_default("POSTGRES_SCHEMA", "public"),
            help="PostgreSQL schema of the tables, created if missing (env POSTGRES_SCHEMA)",
        )
        parser.add_argument(
            "--postgres-pool-size", type=int, default=env_default("POSTGRES_POOL_SIZE", 10),
            help="most PostgreSQL connections (env POSTGRES_POOL_SIZE, default 10)",
        )
        parser.add_argument(
            "--max-answer-bytes", type=int, default=env_default("MAX_ANSWER_BYTES", MAX_ANSWER_BYTES),
            help="answers bigger than this are streamed in parts (default 1 MiB)",
        )

    async def open_service(self) -> None:
        await self.store.open()
        self._push = Producer(
            self.backend, config_push_queue, ConfigPush, latency_bound=True, metrics=self.metrics
        )
        await self._push.start()

    async def close_service(self) -> None:
        try:
            if self._push is not None:
                await self._push.close()
        except PubSubError as exc:
            log.warning("closing the push producer: %s", exc)
        finally:
            await self.store.close()

    async def _store(self, call: Awaitable[T]) -> T:
        """A store call; a database that cannot be reached is an ``unavailable`` answer."""
        try:
            return await call
        except (StoreUnavailable, sqlite3.OperationalError) as exc:
            raise RequestError("unavailable", f"the config store cannot be reached: {exc}") from exc

    # -- reads ---------------------------------------------------------------

    async def op_get(self, r: ConfigRequest) -> Any:
        ws = _text(r.workspace, "workspace")
        keys = require(r.keys, "keys", list)
        self.requests["get", ""] += 1
        pairs = [(_text(k.type, "keys[].type"), _text(k.key, "keys[].key")) for k in keys]
        version, rows = await self._store(self.store.get(ws, pairs))
        return self._answer(version, values=[ConfigValue(t, k, v) for t, k, v in rows])

    async def op_list(self, r: ConfigRequest) -> Any:
        ws, type_ = _text(r.workspace, "workspace"), _text(r.type, "type")
        self.requests["list", type_] += 1
        version, keys = await self._store(self.store.keys(ws, type_))
        return self._answer(version, directory=keys)

    async def op_getvalues(self, r: ConfigRequest) -> Any:
        ws, type_ = _text(r.workspace, "workspace"), _text(r.type, "type")
        self.requests["getvalues", type_] += 1
        version, rows = await self._store(self.store.values(ws, type_))
        return self._answer(version, values=[ConfigValue(type_, k, v) for k, v in rows])

    async def op_getvalues_all_ws(self, r: ConfigRequest) -> Any:
        type_ = _text(r.type, "type")
        self.requests["getvalues-all-ws", type_] += 1
        version, rows = await self._store(self.store.values_all_workspaces(type_))
        return self._answer(
            version, values=[ConfigValue(type_, k, v, workspace=w) for w, k, v in rows]
        )

    async def op_getkeys_all_ws(self, r: ConfigRequest) -> Any:
        type_ = _text(r.type, "type")
        self.requests["getkeys-all-ws", type_] += 1
        version, rows = await self._store(self.store.keys_all_workspaces(type_))
        return self._answer(
            version, values=[ConfigValue(type_, k, "", workspace=w) for w, k in rows]
        )

    async def op_config(self, r: ConfigRequest) -> Any:
        ws = _text(r.workspace, "workspace")
        self.requests["config", ""] += 1
        version, rows = await self._store(self.store.workspace(ws))
        return self._answer(version, values=[ConfigValue(t, k, v) for t, k, v in rows], as_config=True)

    # -- writes --------------------------------------------------------------

    async def op_put(self, r: ConfigRequest) -> Any:
        ws = _text(r.workspace, "workspace")
        values = r.values or []
        deletes = r.keys or []
        if not values and not deletes:
            raise RequestError("bad-request", "values is required (a put with nothing to write)")
        puts: list[tuple[str, str, str, str]] = []
        for i, v in enumerate(values):
            w = _text(v.workspace, f"values[{i}].workspace") if v.workspace is not None else ws
            t, k = _text(v.type, f"values[{i}].type"), _text(v.key, f"values[{i}].key")
            if not isinstance(v.value, str) or "\x00" in v.value:
                raise RequestError("bad-request", f"values[{i}].value must be text without NUL")
            try:
                orjson.loads(v.value)
            except orjson.JSONDecodeError as exc:
                raise RequestError(
                    "bad-request", f"values[{i}].value ({t}/{k}) is not JSON text: {exc}"
                ) from None
            if len(v.value.encode()) + len(t) + len(k) + _ENVELOPE > self.max_answer_bytes:
                raise RequestError(
                    "bad-request",
                    f"values[{i}].value ({t}/{k}) is over {self.max_answer_bytes} bytes; "
                    "store a reference to large data instead",
                )
            puts.append((w, t, k, v.value))
        dels = self._keys(ws, deletes)
        overlap = {p[:3] for p in puts} & set(dels)
        if overlap:
            w, t, k = sorted(overlap)[0]
            raise RequestError("bad-request", f"{w}/{t}/{k} is both put and deleted in one request")
        self.requests["put", ""] += 1
        return await self._write(puts, dels)

    async def op_delete(self, r: ConfigRequest) -> Any:
        ws = _text(r.workspace, "workspace")
        keys = require(r.keys, "keys", list)
        if not keys:
            raise RequestError("bad-request", "keys must not be empty")
        self.requests["delete", ""] += 1
        return await self._write([], self._keys(ws, keys))

    @staticmethod
    def _keys(ws: str, keys: list[ConfigKey]) -> list[tuple[str, str, str]]:
        return [
            (_text(k.workspace, f"keys[{i}].workspace") if k.workspace is not None else ws,
             _text(k.type, f"keys[{i}].type"), _text(k.key, f"keys[{i}].key"))
            for i, k in enumerate(keys)
        ]

    async def _write(
        self, puts: list[tuple[str, str, str, str]], dels: list[tuple[str, str, str]]
    ) -> ConfigResponse:
        """One transaction; one push naming what changed, unless only reserved workspaces did."""
        changed: dict[str, set[str]] = {}
        for w, t, *_ in (*puts, *dels):
            if not is_reserved(w):
                changed.setdefault(t, set()).add(w)
        async with self._write_lock:
            version, previous = await self._store(
                self.store.write_many(list(puts), list(dels), push=bool(changed))
            )
            if previous is not None:
                push = ConfigPush(version, {t: sorted(ws) for t, ws in sorted(changed.items())},
                                  previous)
                try:
                    assert self._push is not None
                    await self._push.send(push)
                    self.pushes += 1
                except PubSubError as exc:
                    # The write stands; receivers notice at the next push or resync.
                    log.error("config version %d written but its push failed: %s", version, exc)
        return ConfigResponse(version=version)

    # -- answers -------------------------------------------------------------

    def _answer(
        self,
        version: int,
        *,
        values: list[ConfigValue] | None = None,
        directory: list[str] | None = None,
        as_config: bool = False,
    ) -> Any:
        """One response, or a stream of parts when it would be too big for one."""
        whole = _response(version, values, directory, as_config)
        if len(encode(whole)) <= self.max_answer_bytes:
            return whole
        budget = self.max_answer_bytes - _ENVELOPE
        items: list[Any] = list(values if values is not None else directory or [])
        parts: list[ConfigResponse] = []
        chunk: list[Any] = []
        size = 0
        for item in items:
            n = len(encode(item)) if isinstance(item, ConfigValue) else len(orjson.dumps(item))
            if chunk and size + n + 1 > budget:
                parts.append(_response(version, *_split_args(chunk, values), as_config))
                chunk, size = [], 0
            chunk.append(item)
            size += n + 1
        if chunk or not parts:
            parts.append(_response(version, *_split_args(chunk, values), as_config))
        log.debug("answer of %d items streamed in %d parts", len(items), len(parts))
        return _stream(parts)


def _split_args(chunk: list[Any], values: list[ConfigValue] | None) -> tuple[Any, Any]:
    return (chunk, None) if values is not None else (None, chunk)


def _response(
    version: int, values: list[ConfigValue] | None, directory: list[str] | None, as_config: bool
) -> ConfigResponse:
    if as_config:
        config: dict[str, dict[str, str]] = {}
        for v in values or ():
            config.setdefault(v.type, {})[v.key] = v.value
        return ConfigResponse(version=version, config=config)
    return ConfigResponse(version=version, values=values, directory=directory)


async def _stream(parts: list[ConfigResponse]) -> AsyncIterator[ConfigResponse]:
    for part in parts:
        yield part


def main() -> None:
    ConfigService.launch("config-svc", __doc__ or "")


if __name__ == "__main__":
    main()

