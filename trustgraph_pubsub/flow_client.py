"""``FlowClient``: blueprints and flows through the flow service.

Every call names the workspace it acts in.  A refusal (an unknown blueprint,
a duplicate flow id, a blueprint still in use ...) raises ``ServiceError``
whose ``type`` says which; no reply within ``timeout`` seconds raises
``PubSubTimeoutError``.  Starting and stopping a flow touch the broker
(queues) as well as the config store, so give those calls a longer
``timeout`` on a slow broker.
"""

from __future__ import annotations

import json
from typing import Any

from trustgraph_schema.services.flow import (
    FlowRequest,
    FlowResponse,
    flow_request_queue,
    flow_response_queue,
)

from .backend import PubSubBackend
from .metrics import Metrics
from .service_client import ServiceClient

__all__ = ["FlowClient"]


class FlowClient(ServiceClient[FlowRequest, FlowResponse]):
    """The flow service's client; use as ``async with FlowClient(backend) as flows``."""

    service = "flow service"

    def __init__(
        self,
        backend: PubSubBackend,
        *,
        timeout: float = 60.0,
        request_topic: str = flow_request_queue,
        response_topic: str = flow_response_queue,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(
            backend, request_topic, FlowRequest, response_topic, FlowResponse,
            timeout=timeout, metrics=metrics,
        )

    def ping_request(self) -> FlowRequest:
        return FlowRequest("list-blueprints", workspace="__system__")

    async def list_blueprints(self, workspace: str) -> list[str]:
        r = await self.call(FlowRequest("list-blueprints", workspace=workspace))
        return list(r.blueprint_names or [])

    async def get_blueprint(self, workspace: str, name: str) -> dict[str, Any]:
        r = await self.call(FlowRequest("get-blueprint", workspace=workspace, blueprint_name=name))
        loaded: dict[str, Any] = json.loads(r.blueprint_definition or "{}")
        return loaded

    async def put_blueprint(self, workspace: str, name: str, definition: dict[str, Any] | str) -> None:
        text = definition if isinstance(definition, str) else json.dumps(definition)
        await self.call(FlowRequest(
            "put-blueprint", workspace=workspace, blueprint_name=name, blueprint_definition=text
        ))

    async def delete_blueprint(self, workspace: str, name: str) -> None:
        await self.call(FlowRequest("delete-blueprint", workspace=workspace, blueprint_name=name))

    async def list_flows(self, workspace: str) -> list[str]:
        r = await self.call(FlowRequest("list-flows", workspace=workspace))
        return list(r.flow_ids or [])

    async def get_flow(self, workspace: str, flow_id: str) -> dict[str, Any]:
        """The flow record: description, blueprint-name, interfaces, parameters, status ..."""
        r = await self.call(FlowRequest("get-flow", workspace=workspace, flow_id=flow_id))
        loaded: dict[str, Any] = json.loads(r.flow or "{}")
        return loaded

    async def start_flow(
        self,
        workspace: str,
        flow_id: str,
        blueprint: str,
        *,
        description: str = "",
        parameters: dict[str, str] | None = None,
    ) -> None:
        await self.call(FlowRequest(
            "start-flow", workspace=workspace, flow_id=flow_id, blueprint_name=blueprint,
            description=description, parameters=dict(parameters or {}),
        ))

    async def stop_flow(self, workspace: str, flow_id: str) -> None:
        await self.call(FlowRequest("stop-flow", workspace=workspace, flow_id=flow_id))
