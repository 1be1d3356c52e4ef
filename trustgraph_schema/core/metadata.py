"""Where a piece of knowledge came from, and the message that carries triples."""

from __future__ import annotations

from dataclasses import dataclass, field

from .primitives import Triple


@dataclass
class Metadata:
    """Provenance and scope of a document or of extracted knowledge.

    Every field is optional: a message says as much as it knows.  ``id``
    names the source, ``workspace`` and ``collection`` scope it, ``user`` is
    who asked, and ``metadata`` holds facts about the source itself.
    """

    id: str | None = None
    workspace: str | None = None
    user: str | None = None
    collection: str | None = None
    metadata: list[Triple] | None = None


@dataclass
class Triples:
    """A batch of triples, the unit knowledge moves in between processors."""

    metadata: Metadata | None = None
    triples: list[Triple] = field(default_factory=list)
