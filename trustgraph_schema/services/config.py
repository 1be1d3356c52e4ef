"""The config service: request/response/push messages and their queues.

The store holds ``(workspace, type, key) -> value`` strings under one global
version.  A request names an ``operation`` and the fields it needs; which
operations exist is the service's business (TrustGraph's are ``get``,
``list``, ``getvalues``, ``getvalues-all-ws``, ``getkeys-all-ws``, ``put``,
``delete``, ``config``), the shapes here cover them all.  Every field but
``operation`` is ``T | None``, so a request carries exactly what it sets.
Field names follow TrustGraph's where they mean the same thing.

Queues live in the control-plane namespace ``config`` (apart from the
per-flow queues of namespace ``flow``), all at qos ``q1``: a request, a
reply or a push lost to a broker hiccup would leave a caller waiting or a
processor running on stale config.  Pushes are notifications: receivers
subscribe first, then fetch the full config, so a push only has to reach
subscribers that exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from ..core.primitives import Error
from ..topic import topic

CONTROL_NAMESPACE: Final = "config"

config_request_queue: Final = topic("config-request", qos="q1", namespace=CONTROL_NAMESPACE)
config_response_queue: Final = topic("config-response", qos="q1", namespace=CONTROL_NAMESPACE)
config_push_queue: Final = topic("config-push", qos="q1", namespace=CONTROL_NAMESPACE)


@dataclass
class ConfigKey:
    """One entry's address within a workspace (``workspace`` overrides the request's)."""

    type: str
    key: str
    workspace: str | None = None


@dataclass
class ConfigValue:
    """One entry of a workspace.

    ``workspace`` is set in answers that span workspaces
    (``getvalues-all-ws``, ``getkeys-all-ws``); in a ``put`` it overrides the
    request's workspace for this entry, so one write can span workspaces.
    """

    type: str
    key: str
    value: str
    workspace: str | None = None


@dataclass
class ConfigRequest:
    """A call to the config service; ``operation`` says which.

    A ``put`` may carry ``keys`` as well as ``values``: those keys are
    deleted in the same write (one version, at most one push), which is how a
    batch of puts and deletes stays atomic.  Entries may name their own
    ``workspace``, so that batch may span workspaces.
    """

    operation: str
    workspace: str | None = None
    keys: list[ConfigKey] | None = None
    type: str | None = None
    values: list[ConfigValue] | None = None


@dataclass
class ConfigResponse:
    """The answer: ``version`` is the store's version the answer was read at.

    ``config`` maps type -> key -> value (the whole workspace).  ``error``
    is set instead of the rest when the request failed.
    """

    version: int | None = None
    values: list[ConfigValue] | None = None
    directory: list[str] | None = None
    config: dict[str, dict[str, str]] | None = None
    error: Error | None = None


@dataclass
class ConfigPush:
    """Broadcast after each write: the new ``version`` and what it touched.

    ``changes`` maps each changed config type to the workspaces it changed
    in (TrustGraph's shape).  Reserved workspaces (ids starting with ``_``)
    are never named, and a write that touched only those takes a version
    but is not pushed at all (nobody could act on it).  ``previous`` is the
    version of the push before this one, so a receiver that has applied
    ``previous`` knows it missed nothing, and one that has not knows it
    missed a push (it re-fetches).  A push carries no values: receivers fetch
    what they need, at a version at least this one.
    """

    version: int
    changes: dict[str, list[str]] = field(default_factory=dict)
    previous: int = 0
