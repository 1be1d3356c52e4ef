"""Request/response types and queue names of the control-plane and model services."""

from .chunker import TextChunkRequest, TextChunkResponse
from .config import (
    CONTROL_NAMESPACE,
    ConfigKey,
    ConfigPush,
    ConfigRequest,
    ConfigResponse,
    ConfigValue,
    config_push_queue,
    config_request_queue,
    config_response_queue,
)
from .flow import FlowRequest, FlowResponse, flow_request_queue, flow_response_queue
from .llm import TextCompletionRequest, TextCompletionResponse

__all__ = [
    "CONTROL_NAMESPACE",
    "ConfigKey",
    "ConfigPush",
    "ConfigRequest",
    "ConfigResponse",
    "ConfigValue",
    "FlowRequest",
    "FlowResponse",
    "TextChunkRequest",
    "TextChunkResponse",
    "TextCompletionRequest",
    "TextCompletionResponse",
    "config_push_queue",
    "config_request_queue",
    "config_response_queue",
    "flow_request_queue",
    "flow_response_queue",
]
