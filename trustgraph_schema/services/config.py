"""The config service: request/response/push messages and their queues.

The store holds ``(workspace, type, key) -> value`` strings under one global
version.  A request names an ``operation`` and the fields it needs; which
operations exist is the service's business (TrustGraph's are ``get``,
``list``, ``getvalues``, ``put``, ``delete``, ``config``), the shapes here
cover them all.  Every field but ``operation`` is ``T | None``, so a
request carries exactly what it sets.

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
    """One entry's address within a workspace."""

    type: str
    key: str


@dataclass
class ConfigValue:
    """One entry of a workspace."""

    type: str
    key: str
    value: str


@dataclass
class ConfigRequest:
    """A call to the config service; ``operation`` says which."""

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

    ``types`` and ``workspaces`` name the changed config types and
    workspaces (reserved workspaces, ids starting with ``_``, are never
    named).  ``config`` may carry a snapshot for small deployments; a
    receiver must not rely on it and fetches what it needs.
    """

    version: int
    types: list[str] = field(default_factory=list)
    workspaces: list[str] = field(default_factory=list)
    config: dict[str, dict[str, str]] | None = None
