"""The base of the code generators: what writing encoders and decoders shares.

``_GenBase`` holds the state of one compilation unit (its source blocks,
the constants it named in ``_NS``, its memoised helper functions) and the
naming rules.  ``encoders._EncGen`` and ``decoders._DecGen`` add the encode
and the decode half; ``compiler._Gen`` joins both, so that one instance
writes one unit's source with one set of names, as a single class did.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from .analysis import _NoneType, _plan, _Type
from .runtime import _NS

#: Python types a JSON value may have for each scalar kind (checked as a set).
_TYPE_SETS: dict[str, frozenset[type[Any]]] = {
    "str": frozenset({str}),
    "int": frozenset({int}),
    "bool": frozenset({bool}),
    "float": frozenset({float, int}),
}


#: Levels of nested dataclasses inlined into one generated function.
_MAX_INLINE = 3


def _scalar_kind(t: _Type) -> tuple[str | None, bool]:
    """``(kind, optional)`` when ``t`` is a scalar checked by type alone, else ``(None, _)``."""
    optional = t.kind == "opt"
    base = t.inner if optional else t
    if base.kind in ("str", "int", "bool", "float"):
        return base.kind, optional
    return None, optional


class _GenBase:
    """The state and the naming shared by the encode and the decode half of ``_Gen``."""

    _names = itertools.count(1)

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.consts: dict[Any, str] = {}
        self.convs: dict[tuple[str, _Type], str] = {}

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}"

    def const(self, value: Any) -> str:
        """Name a constant in the shared namespace (classes, defaults, factories, type sets)."""
        key = (type(value), value) if isinstance(value, frozenset) else id(value)
        name = self.consts.get(key)
        if name is None:
            name = self.fresh("K")
            _NS[name] = value
            self.consts[key] = name
        return name

    @staticmethod
    def name(prefix: str, cls: type[Any]) -> str:
        return f"{prefix}{_plan(cls).ident}"

    @staticmethod
    def can_inline(cls: type[Any] | None, chain: tuple[type[Any], ...], encoding: bool) -> bool:
        assert cls is not None
        plan = _plan(cls)
        fallback = plan.encode_fallback if encoding else plan.decode_fallback
        return fallback is None and cls not in chain and len(chain) < _MAX_INLINE

    def function(self, kind: str, t: _Type, body: Callable[[], list[str]]) -> str:
        """A one-argument helper function for items of type ``t`` (memoised)."""
        name = self.convs.get((kind, t))
        if name is None:
            name = self.convs[(kind, t)] = self.fresh(kind)
            self.blocks.append("\n".join([f"def {name}(x):", *body(), "    return x"]))
        return name

    @staticmethod
    def tset(scalar: str, optional: bool) -> frozenset[type[Any]]:
        return _TYPE_SETS[scalar] | ({_NoneType} if optional else frozenset())

    def source(self) -> str:
        return "\n\n\n".join(self.blocks) + "\n"
