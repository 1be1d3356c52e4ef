"""The flow service: blueprints, and flows started and stopped through config entries."""

from .blueprint import BlueprintError, FlowPlan, instantiate, resolve_parameters, validate_blueprint
from .service import FlowService, main

__all__ = [
    "BlueprintError",
    "FlowPlan",
    "FlowService",
    "instantiate",
    "main",
    "resolve_parameters",
    "validate_blueprint",
]
