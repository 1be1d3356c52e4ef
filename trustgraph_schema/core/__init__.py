"""Types shared by every service: errors, RDF terms and triples, metadata."""

from .metadata import Metadata, Triples
from .primitives import BLANK, IRI, LITERAL, TRIPLE, Error, Term, Triple

__all__ = ["BLANK", "IRI", "LITERAL", "TRIPLE", "Error", "Metadata", "Term", "Triple", "Triples"]
