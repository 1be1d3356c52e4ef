"""``DefaultFlowStart``: a flow every deployment should have running."""

from __future__ import annotations

from typing import Any

from trustgraph_pubsub import ServiceError

from ..initialiser import InitContext, Initialiser

__all__ = ["DefaultFlowStart"]


class DefaultFlowStart(Initialiser):
    """Start ``flow_id`` from ``blueprint`` in ``workspace``; nothing if it runs already.

    params: ``workspace``, ``flow_id``, ``blueprint``, ``description``
    (optional), ``parameters`` (optional, name -> value).  The blueprint must
    be in the workspace (``WorkspaceInit`` copies it from the template); until
    it is, the flow service refuses and the next wake tries again.
    """

    def __init__(self, workspace: Any = None, flow_id: Any = None, blueprint: Any = None,
                 description: str = "", parameters: Any = None) -> None:
        for name, value in (("workspace", workspace), ("flow_id", flow_id), ("blueprint", blueprint)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"param {name!r} must be a non-empty string")
        if parameters is not None and not (
            isinstance(parameters, dict) and all(isinstance(k, str) for k in parameters)
        ):
            raise TypeError("param 'parameters' must be a mapping of name -> value")
        self.workspace: str = workspace
        self.flow_id: str = flow_id
        self.blueprint: str = blueprint
        self.description = str(description)
        self.parameters = {k: str(v) for k, v in (parameters or {}).items()}

    async def run(self, ctx: InitContext, old_flag: str | None, new_flag: str) -> None:
        if self.flow_id in await ctx.flows.list_flows(self.workspace):
            ctx.log.info("flow %s/%s is already running", self.workspace, self.flow_id)
            return
        try:
            await ctx.flows.start_flow(self.workspace, self.flow_id, self.blueprint,
                                       description=self.description, parameters=self.parameters)
        except ServiceError as exc:
            if exc.type != "exists":  # started meanwhile by someone else: fine
                raise
        ctx.log.info("started flow %s/%s from %s", self.workspace, self.flow_id, self.blueprint)
