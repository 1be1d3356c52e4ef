"""Type analysis: a dataclass's fields resolved once into a type tree and a plan.

``_plan(cls)`` reads the type hints of a dataclass, resolves each field's
hint into a ``_Type`` tree (``str int float bool bytes``, ``list[T]``,
``dict[str, T]``, nested dataclasses, ``T | None``), notes why a class
cannot be compiled when it cannot (it then falls back to the walker and
dacite), and caches the ``_Class`` plan in ``registry._PLANS``.  Every
other module of the codec works from these plans.
"""

from __future__ import annotations

import dataclasses
import keyword
import logging
import types
import typing
from typing import Any, get_args, get_origin

from ..errors import SchemaError
from .registry import _IDS, _LOCK, _PLANS

# the package's name, so the logger is still "trustgraph_schema.codec"
log = logging.getLogger(__package__)

_NoneType = type(None)


class _Unsupported(Exception):
    """A type hint the compiler does not handle (the class falls back)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Type:
    """A resolved field type: ``kind`` is str/int/float/bool/bytes/list/dict/opt/dc."""

    kind: str
    arg: _Type | None = None
    cls: type[Any] | None = None

    @property
    def inner(self) -> _Type:
        assert self.arg is not None
        return self.arg

    def needs_encoding(self) -> bool:
        """Whether the value must be rewritten (not merely checked) for JSON."""
        if self.kind in ("bytes", "dc"):
            return True
        if self.arg is not None:
            return self.arg.needs_encoding()
        return False

    def __str__(self) -> str:
        if self.kind == "opt":
            return f"{self.inner} | None"
        if self.kind == "list":
            return f"list[{self.inner}]"
        if self.kind == "dict":
            return f"dict[str, {self.inner}]"
        if self.kind == "dc":
            assert self.cls is not None
            return self.cls.__name__
        return self.kind


_SCALARS: dict[type[Any], str] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    bytes: "bytes",
}


def _resolve(hint: Any) -> _Type:
    if isinstance(hint, type) and hint in _SCALARS:
        return _Type(_SCALARS[hint])
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is list:
        if len(args) != 1:
            raise _Unsupported(f"{hint!r} (a list needs its item type: list[T])")
        return _Type("list", _resolve(args[0]))
    if origin is dict:
        if len(args) != 2 or args[0] is not str:
            raise _Unsupported(f"{hint!r} (JSON object keys are strings: dict[str, T])")
        return _Type("dict", _resolve(args[1]))
    if origin is typing.Union or origin is types.UnionType:
        others = [a for a in args if a is not _NoneType]
        if len(others) == 1 and len(args) == 2:
            inner = _resolve(others[0])
            return inner if inner.kind == "opt" else _Type("opt", inner)
        raise _Unsupported(f"{hint!r} (a union of several types)")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _Type("dc", cls=hint)
    raise _Unsupported(repr(hint))


def _dataclasses_in(t: _Type | None) -> list[type[Any]]:
    if t is None:
        return []
    if t.kind == "dc":
        assert t.cls is not None
        return [t.cls]
    return _dataclasses_in(t.arg)


@dataclasses.dataclass(slots=True)
class _Field:
    name: str
    type: _Type | None  # None: a hint the compiler does not handle
    required: bool  # no default and no default_factory
    default: Any  # dataclasses.MISSING when there is none
    factory: Any  # dataclasses.MISSING when there is none
    kw_only: bool

    @property
    def optional(self) -> bool:
        return self.type is not None and self.type.kind == "opt"


@dataclasses.dataclass(slots=True)
class _Class:
    cls: type[Any]
    ident: int
    #: encode order: fields that are normally present first, then ``T | None`` ones
    fields: list[_Field]
    #: why the class is encoded by the walker (None: compiled)
    encode_fallback: str | None
    #: why the class is decoded by dacite (None: compiled)
    decode_fallback: str | None


def _plan(cls: type[Any]) -> _Class:
    """Analyse a dataclass once: field types, defaults, and whether it compiles."""
    plan = _PLANS.get(cls)
    if plan is not None:
        return plan
    with _LOCK:  # one plan (and one name in the generated code) per class
        plan = _PLANS.get(cls)
        return plan if plan is not None else _analyse(cls)


def _analyse(cls: type[Any]) -> _Class:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise SchemaError(f"{cls!r} is not a dataclass: schemas are @dataclass classes")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise SchemaError(
            f"schema {cls.__qualname__}: cannot resolve its type hints ({exc}); "
            "define every class a hint names at module level"
        ) from exc
    enc_reason: str | None = None
    dec_reason: str | None = None
    fields: list[_Field] = []
    for f in dataclasses.fields(cls):
        try:
            t: _Type | None = _resolve(hints.get(f.name, f.type))
        except _Unsupported as exc:
            t = None
            enc_reason = dec_reason = f"field {f.name}: unsupported type {exc}"
        if not f.name.isidentifier() or keyword.iskeyword(f.name):
            enc_reason = dec_reason = f"field name {f.name!r} is not an identifier"
        if not f.init:
            dec_reason = f"field {f.name} has init=False"
        kw_only = f.kw_only is True
        fields.append(
            _Field(
                name=f.name,
                type=t,
                required=f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING,
                default=f.default,
                factory=f.default_factory,
                kw_only=kw_only,
            )
        )
    if any(isinstance(h, dataclasses.InitVar) for h in hints.values()):
        dec_reason = "it has InitVar pseudo-fields"
    params = getattr(cls, "__dataclass_params__", None)
    if params is not None and not params.init:
        dec_reason = "it has no dataclass __init__"
    fields.sort(key=lambda f: f.optional)  # stable: present fields first
    plan = _Class(cls, next(_IDS), fields, enc_reason, dec_reason)
    if enc_reason or dec_reason:
        log.debug(
            "codec: %s is not compiled (%s); using the walker/dacite path",
            cls.__qualname__,
            enc_reason or dec_reason,
        )
    _PLANS[cls] = plan
    return plan
