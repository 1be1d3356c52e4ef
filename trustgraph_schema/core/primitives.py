"""Shared primitives: the error record and RDF terms and triples.

Modelled on TrustGraph's schema.  A ``Term`` is one RDF node; its ``type``
says which of the other fields carry it, the rest stay None and so are
absent on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: ``Term.type`` values.
IRI: Final = "i"
BLANK: Final = "b"
LITERAL: Final = "l"
TRIPLE: Final = "t"


@dataclass
class Error:
    """What went wrong in a service; carried by responses as ``error``.

    ``type`` is a short machine-readable class (``"not-found"``,
    ``"bad-request"`` ...), ``message`` is for people.
    """

    type: str
    message: str


@dataclass
class Term:
    """An RDF term: an IRI, a blank node, a literal, or a quoted triple (RDF-star).

    ``type`` is one of ``IRI``, ``BLANK``, ``LITERAL``, ``TRIPLE`` and says
    which fields are used: ``iri``; ``value`` (a blank node's label, or a
    literal's text with either ``datatype`` or ``language``); ``triple``.
    """

    type: str
    iri: str | None = None
    value: str | None = None
    datatype: str | None = None
    language: str | None = None
    triple: Triple | None = None


@dataclass
class Triple:
    """Subject, predicate, object; ``g`` names the graph (None: the default graph).

    ``o`` may be None in a pattern (a query for every object).
    """

    s: Term
    p: Term
    o: Term | None = None
    g: str | None = None
