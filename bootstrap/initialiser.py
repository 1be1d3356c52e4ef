"""``Initialiser``: one step of bringing a deployment to its initial state.

An initialiser is a class with ``async run(ctx, old_flag, new_flag)``; the
bootstrapper runs it when the flag configured for it differs from the flag
stored after its last success (``__system__/init-state/<name>``), so
bumping a flag in the initialisers file re-runs exactly that one.  ``run``
must be idempotent: a crash after the work and before the flag is stored
runs it again.  It raises to fail (the bootstrapper logs it and retries at
its next wake); whatever it raises never stops the other initialisers.

``wait_for_services = False`` marks an initialiser that prepares the
ground the services stand on (broker tenants, queues): it runs before the
gate, while the config service may still be down.

Constructor arguments are the spec's ``params``; an initialiser checks them
there, so a bad file is refused when the bootstrapper starts, not at 3 a.m.
Third-party initialisers are ordinary classes named by dotted path in the
file (``mypackage.module:Class`` or ``mypackage.module.Class``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from trustgraph_pubsub import PubSubBackend
from trustgraph_pubsub.config_client import ConfigClient
from trustgraph_pubsub.flow_client import FlowClient

__all__ = ["InitContext", "Initialiser", "InitialiserError"]


class InitialiserError(Exception):
    """An initialiser could not do its work; the message says why (no traceback is logged)."""


@dataclass
class InitContext:
    """What an initialiser gets: a logger scoped to its name, the clients, the backend."""

    name: str
    log: logging.LoggerAdapter[logging.Logger]
    backend: PubSubBackend
    config: ConfigClient
    flows: FlowClient
    #: the bootstrapper's own parameters (pub/sub options included)
    settings: dict[str, Any] = field(default_factory=dict)


class Initialiser:
    """Base class; subclasses implement ``run`` and check their params in ``__init__``."""

    #: False: run before the service gate (config and flow services may be down)
    wait_for_services: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        if params:
            raise TypeError(f"unexpected params: {', '.join(sorted(params))}")

    async def run(self, ctx: InitContext, old_flag: str | None, new_flag: str) -> None:
        raise NotImplementedError


def require_str(params: dict[str, Any], name: str, default: str | None = None) -> str:
    """A string parameter, or ``TypeError`` naming it."""
    value = params.pop(name, default)
    if not isinstance(value, str) or not value:
        raise TypeError(f"param {name!r} must be a non-empty string, got {value!r}")
    return value


def reject_unknown(params: dict[str, Any]) -> None:
    if params:
        raise TypeError(f"unknown params: {', '.join(sorted(params))}")
