"""The flow service: blueprints and running flows, request/response and queues.

Operations (``FlowRequest.operation``) are the service's business;
TrustGraph's are ``list-blueprints``, ``get-blueprint``, ``put-blueprint``,
``delete-blueprint``, ``list-flows``, ``get-flow``, ``start-flow`` and
``stop-flow``.  Every field but ``operation`` is ``T | None``.

The queues sit beside the config service's in the control-plane namespace
``config`` at qos ``q1``.  Flow changes reach processors through config
pushes, so the flow service has no push queue of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..core.primitives import Error
from ..topic import topic
from .config import CONTROL_NAMESPACE

flow_request_queue: Final = topic("flow-request", qos="q1", namespace=CONTROL_NAMESPACE)
flow_response_queue: Final = topic("flow-response", qos="q1", namespace=CONTROL_NAMESPACE)


@dataclass
class FlowRequest:
    """A call to the flow service.

    ``blueprint_definition`` is the blueprint as JSON text; ``parameters``
    are the values a ``start-flow`` resolves the blueprint's parameters with.
    """

    operation: str
    workspace: str | None = None
    blueprint_name: str | None = None
    blueprint_definition: str | None = None
    description: str | None = None
    flow_id: str | None = None
    parameters: dict[str, str] | None = None


@dataclass
class FlowResponse:
    """The answer; ``flow`` is a flow record as JSON text."""

    blueprint_names: list[str] | None = None
    flow_ids: list[str] | None = None
    blueprint_definition: str | None = None
    flow: str | None = None
    description: str | None = None
    parameters: dict[str, str] | None = None
    error: Error | None = None
