"""Text chunking: the example flow processor's request and response.

A flow's chunker splits ``text`` into pieces of at most ``chunk_size``
characters, each overlapping the previous one by ``chunk_overlap``.  Both
come from the flow's parameters unless the request overrides them.  Its
queues belong to each flow (the blueprint names them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.primitives import Error


@dataclass
class TextChunkRequest:
    """Text to split; ``chunk_size``/``chunk_overlap`` override the flow's parameters."""

    text: str
    chunk_size: int | None = None
    chunk_overlap: int | None = None


@dataclass
class TextChunkResponse:
    """The pieces in order, or ``error`` when the request could not be served."""

    chunks: list[str] = field(default_factory=list)
    error: Error | None = None
