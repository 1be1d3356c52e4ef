"""The bundled initialisers; see each class for its params."""

from .flows import DefaultFlowStart
from .pulsar import PulsarTopology
from .queues import QueueTopology
from .seeds import TemplateSeed, WorkspaceInit

__all__ = ["DefaultFlowStart", "PulsarTopology", "QueueTopology", "TemplateSeed", "WorkspaceInit"]
