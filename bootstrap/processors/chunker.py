"""The text chunker (console script ``chunker``): an example ``FlowProcessor``.

Per flow, it answers ``TextChunkRequest`` on the flow's ``request`` topic
with a ``TextChunkResponse`` on its ``response`` topic: the text split into
pieces of at most ``chunk-size`` characters, each starting ``chunk-overlap``
characters before the previous one ended.  Both come from the flow's
parameters (so two flows of one blueprint can chunk differently) unless the
request overrides them.  A request it cannot serve (an overlap not smaller
than the size, say) gets a response whose ``error`` says why.

Its blueprint entry::

    "chunker:{id}": {"topics": {"request": "q1/tg/flow/chunk-request.{workspace}.{id}",
                                "response": "q1/tg/flow/chunk-response.{workspace}.{id}"},
                     "parameters": {"chunk-size": "{chunk-size}", "chunk-overlap": "{chunk-overlap}"}}
"""

from __future__ import annotations

from typing import Any

from trustgraph_pubsub.flow_processor import Flow, FlowProcessor, ResponderSpec
from trustgraph_schema import Error, TextChunkRequest, TextChunkResponse

__all__ = ["Chunker", "chunk", "main"]

DEFAULT_SIZE = 1000
DEFAULT_OVERLAP = 0


def chunk(text: str, size: int, overlap: int) -> list[str]:
    """``text`` in pieces of at most ``size`` characters overlapping by ``overlap``."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap must be in [0, {size}), got {overlap}")
    step = size - overlap
    return [text[i:i + size] for i in range(0, max(len(text) - overlap, 1), step)] if text else []


def _int(value: Any, default: int) -> int:
    if value in (None, ""):
        return default
    return int(value)


class Chunker(FlowProcessor):
    """Splits text per flow; see the module docstring."""

    default_ident = "chunker"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.register(ResponderSpec(
            "request", "response", TextChunkRequest, TextChunkResponse, self.on_request
        ))

    async def on_request(
        self, flow: Flow, request: TextChunkRequest, properties: dict[str, str]
    ) -> TextChunkResponse:
        try:
            size = request.chunk_size or _int(flow.parameter("chunk-size"), DEFAULT_SIZE)
            overlap = request.chunk_overlap
            if overlap is None:
                overlap = _int(flow.parameter("chunk-overlap"), DEFAULT_OVERLAP)
            return TextChunkResponse(chunks=chunk(request.text, size, overlap))
        except ValueError as exc:
            return TextChunkResponse(error=Error(type="bad-request", message=str(exc)))


def main() -> None:
    Chunker.launch("chunker", __doc__ or "")


if __name__ == "__main__":
    main()
