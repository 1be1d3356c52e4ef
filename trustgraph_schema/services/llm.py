"""Text completion: the request an LLM processor takes and the response(s) it gives.

Its queues belong to each flow (the blueprint names them), so there are no
queue constants here.  With ``streaming`` set the processor answers with
several responses, each carrying a piece of ``response``; the last one has
``end_of_stream`` set (a non-streaming answer is a single response with
``end_of_stream`` set too, so callers need only one loop).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.primitives import Error


@dataclass
class TextCompletionRequest:
    """``system`` may be ``""``; ``model``/``temperature`` override the processor's defaults."""

    system: str
    prompt: str
    streaming: bool = False
    model: str | None = None
    temperature: float | None = None


@dataclass
class TextCompletionResponse:
    """One answer (or one piece of a streamed answer); ``error`` set when it failed."""

    response: str | None = None
    in_token: int | None = None
    out_token: int | None = None
    model: str | None = None
    error: Error | None = None
    end_of_stream: bool = False
