"""None-omitting JSON codec for dataclasses, compiled once per class.

The wire rules (DESIGN.md, "Schemas and codec"):

* a field whose value is ``None`` is absent from the JSON, never ``null``;
  empty values (``""``, ``[]``, ``{}``, ``0``, ``False``) are written;
* ``bytes`` travel as base64 text;
* decode fills defaults for missing fields (a missing ``T | None`` field is
  ``None``), ignores unknown fields, and raises ``DecodeError`` naming the
  field path (``values[3].key``) for a missing required field, a value of
  the wrong JSON type or bytes that are not JSON.  JSON types are exact:
  ``true`` is not an integer, ``1`` is not a string; a ``float`` field takes
  an integer and stores it as a float; ``null`` is accepted only where the
  type is ``T | None``.

Supported field types: ``str int float bool bytes``, ``list[T]``,
``dict[str, T]``, nested dataclasses (recursive ones included) and
``T | None``, nested in any combination.  A class with any other field type
(an ``Enum``, ``tuple``, ``Literal``, a union of several types ...) or with
``InitVar``/``init=False`` fields still works: the strict walker below
encodes it and the dacite reference decoder (``_reference``) decodes it.
The tests hold the compiled decoder to that reference.

API: ``encode(obj) -> bytes``, ``decode(cls, data) -> obj``,
``decoder(cls)`` (the per-class decoder, for hot paths), ``check_schema``
(compile now, fail early) and ``reference_decode`` (dacite).

Why it is fast: the first ``encode``/``decode`` of a class resolves its type
hints into a small type tree and generates Python source for its encoder
and decoder (nested dataclasses inlined, a loop per list instead of a call
per item, one Python frame per message), ``exec``s it once and caches the
functions (``generated_source(cls)`` shows them).  The encoder reads
attributes into dict literals for orjson; a class whose fields are all
plain scalars is handed to orjson as it is (orjson writes dataclasses
itself, nulls included, which cannot happen there).  The decoder checks
JSON types with ``type(v) is str``, keeps the lists and dicts orjson made
when their items need no conversion, and builds plain dataclasses the way
``copy`` and ``pickle`` do (``object.__new__`` and attribute stores);
classes with ``__post_init__``, frozen ones or ones with their own
``__init__`` go through their constructor.  Errors are rare, so the fast
path does not track where it is: when it gives up, a precise decoder (one
function per class, recording the path) or, for encode, a strict walker
runs over the same message and says exactly what is wrong, or produces the
result when the value was merely unusual (a ``str`` subclass, a tuple for a
list).

Choices where the spec is silent:

* encode trusts scalar values to match their hints (mypy checks that; the
  consumer's decode rejects a wrong one, naming the field).  It does check
  what would otherwise put something wrong on the wire: an object of the
  wrong class, a container of the wrong kind, ``None`` in a field that is
  not ``T | None`` (omitted when the field has a default, refused when it is
  required), NaN and infinities (JSON has none; orjson would write null),
  and whatever orjson cannot write (integers beyond 64 bits, lone
  surrogates, non-str dict keys).  These raise ``EncodeError`` naming the
  field.
* ``EncodeError`` and ``DecodeError`` messages name the field and the JSON
  type found, never the value, which could be a secret.
* Nesting is bounded by orjson: 254 JSON levels on encode, 1024 on decode
  (a recursive schema such as ``Term`` -> ``Triple`` -> ``Term`` uses two
  levels per step); deeper messages raise ``EncodeError``/``DecodeError``.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import itertools
import keyword
import linecache
import logging
import math
import operator
import threading
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_args, get_origin

import orjson

from ._reference import BuildError, build, reference_decode
from .errors import DecodeError, EncodeError, SchemaError

__all__ = ["check_schema", "decode", "decoder", "encode", "reference_decode"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_dumps = orjson.dumps
_loads = orjson.loads
#: orjson would write a datetime as text: refuse it instead (no schema type
#: reads it back), so the walker names the field.
_DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME
_NoneType = type(None)
_INT_MIN, _INT_END = -(2**63), 2**64


# --------------------------------------------------------------------------
# Type trees


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


_PLANS: dict[type[Any], _Class] = {}
_ENCODERS: dict[type[Any], Callable[[Any], Any]] = {}  # object -> JSON-ready tree
_ENTRIES: dict[type[Any], Callable[[Any], bytes]] = {}  # object -> bytes
_DECODERS: dict[type[Any], Callable[[Any], Any]] = {}
_PRECISE: dict[type[Any], Callable[[Any], Any]] = {}
_SOURCES: dict[type[Any], str] = {}
_LOCK = threading.RLock()
_IDS = itertools.count(1)


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


# --------------------------------------------------------------------------
# Runtime helpers shared by the generated code


class _Invalid(Exception):
    """Raised by generated decoders; ``path`` collects segments innermost first."""

    __slots__ = ("message", "path")

    def __init__(self, message: str, path: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = path if path is not None else []


class _Anomaly(Exception):
    """Raised by generated encoders: let the strict walker look at this message."""


_JSON_NAMES: dict[type[Any], str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    _NoneType: "null",
    list: "an array",
    dict: "an object",
}


def _expected(what: str, value: Any) -> str:
    # Names the JSON type found, never the value: it could be a secret.
    return f"expected {what}, got {_JSON_NAMES.get(type(value), type(value).__name__)}"


def _join(path: list[str]) -> str:
    """``["key", "[3]", "values"]`` (innermost first) -> ``values[3].key``."""
    out = ""
    for seg in reversed(path):
        if seg.startswith("[") or not out:
            out += seg
        else:
            out += "." + seg
    return out


def _b64e(value: Any) -> str:
    return binascii.b2a_base64(value, newline=False).decode("ascii")


def _b64d(value: Any) -> bytes:
    if type(value) is not str:
        raise _Invalid(_expected("base64 text", value))
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except ValueError:
        raise _Invalid("not valid base64 text") from None


def _item_error(seq: list[Any], conv: Callable[[Any], Any]) -> None:
    """Re-run ``conv`` over a failed list to find the index at fault."""
    for i, item in enumerate(seq):
        try:
            conv(item)
        except _Invalid as exc:
            exc.path.append(f"[{i}]")
            raise
    raise _Invalid("invalid item")  # pragma: no cover - conv failed once, it fails again


def _value_error(mapping: dict[str, Any], conv: Callable[[Any], Any]) -> None:
    for key, item in mapping.items():
        try:
            conv(item)
        except _Invalid as exc:
            exc.path.append(f"[{key!r}]")
            raise
    raise _Invalid("invalid value")  # pragma: no cover


_notnone = functools.partial(operator.is_not, None)


def _finite(seq: Any) -> bool:
    # One C-level pass: the sum of finite numbers is finite unless it
    # overflows, and then the strict walker decides.
    return math.isfinite(sum(seq))


def _finite_opt(seq: Any) -> bool:
    return math.isfinite(sum(filter(_notnone, seq)))


_NS: dict[str, Any] = {
    "__name__": "trustgraph_schema._generated",
    "_Invalid": _Invalid,
    "_Anomaly": _Anomaly,
    "_expected": _expected,
    "_b64e": _b64e,
    "_b64d": _b64d,
    "_item_error": _item_error,
    "_value_error": _value_error,
    "_finite": _finite,
    "_finite_opt": _finite_opt,
    "_MISSING": dataclasses.MISSING,
    "_loads": orjson.loads,
}

#: Python types a JSON value may have for each scalar kind (checked as a set).
_TYPE_SETS: dict[str, frozenset[type[Any]]] = {
    "str": frozenset({str}),
    "int": frozenset({int}),
    "bool": frozenset({bool}),
    "float": frozenset({float, int}),
}
_DESC = {"str": "a string", "int": "an integer", "bool": "a boolean"}


# --------------------------------------------------------------------------
# Code generation


#: Levels of nested dataclasses inlined into one generated function.
_MAX_INLINE = 3


def _direct_construct(cls: type[Any]) -> bool:
    """Whether instances may be built without calling ``__init__``, as copy and pickle do.

    Only for plain dataclasses whose ``__init__`` is the one ``@dataclass``
    wrote (it does nothing but assign the fields): not frozen, no
    ``__post_init__``, no custom ``__new__``/``__setattr__``.  Everything
    else goes through its constructor.
    """
    params = getattr(cls, "__dataclass_params__", None)
    code = getattr(getattr(cls, "__init__", None), "__code__", None)
    own = [vars(base) for base in cls.__mro__[:-1]]  # every class but object
    return (
        params is not None
        and not params.frozen
        and not hasattr(cls, "__post_init__")
        and not any("__new__" in ns or "__setattr__" in ns for ns in own)
        and getattr(code, "co_qualname", "") == "__create_fn__.<locals>.__init__"
    )


def _enc_cond(t: _Type, var: str) -> str | None:
    """An expression true when scalar ``var`` cannot be written for ``t`` (None included).

    str/int/bool values are trusted (see the module docstring); only None
    is refused, so that it never becomes ``null``.
    """
    k = t.kind
    if k in ("str", "int", "bool"):
        return f"{var} is None"
    if k == "float":
        # an int is fine; a float must be finite (x - x is NaN for NaN and infinities)
        return f"((type({var}) is not float or {var} - {var} != 0.0) and type({var}) is not int)"
    return None


def _literal(value: Any) -> str | None:
    """Source text for a simple immutable default (a constant beats a global lookup)."""
    if (
        value is None
        or type(value) in (bool, int, str)
        or (type(value) is float and math.isfinite(value))
    ):
        return repr(value)
    return None


def _native(plan: _Class) -> bool:
    """Whether orjson may write instances of ``plan.cls`` itself.

    orjson serialises a dataclass instance from its ``__dict__`` (skipping
    keys that start with ``_``), nulls included.  That is right, and faster
    than building a dict, when every field is a required or defaulted
    scalar (never ``T | None``) and the instance has a ``__dict__``:
    the encoder then only checks the fields.  An attribute set on an
    instance beyond its fields would be written too; decoders ignore it.
    """
    return (
        bool(plan.fields)
        and plan.encode_fallback is None
        and all(
            f.type is not None
            and f.type.kind in ("str", "int", "bool", "float")
            and not f.name.startswith("_")
            for f in plan.fields
        )
        and not any("__slots__" in vars(base) for base in plan.cls.__mro__[:-1])
    )


def _dec_identity(t: _Type) -> bool:
    """Whether a decoded value is the parsed JSON itself (only checked, never rebuilt)."""
    if t.kind in ("str", "int", "bool"):
        return True
    if t.kind in ("opt", "list", "dict"):
        return _dec_identity(t.inner)
    return False


class _Gen:
    """Writes the source of one compilation unit (a class and its new dependencies).

    Per dataclass ``C`` it emits ``E<n>`` (fast encoder), ``D<n>`` (fast
    decoder) and ``d<n>`` (precise decoder).  The fast ones inline nested
    dataclasses up to ``_MAX_INLINE`` levels (loops instead of a call per
    list item) and raise ``_Anomaly`` without saying why; the precise
    decoder calls one function per class and records the path, and runs
    only after the fast one gave up.
    """

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

    # -- fast encoder ------------------------------------------------------

    def enc_obj(
        self, plan: _Class, src: str, out: str, ind: int, chain: tuple[type[Any], ...]
    ) -> list[str]:
        """Lines that check ``src`` is a ``plan.cls`` and build its JSON dict in ``out``."""
        p = " " * ind
        lines = [f"{p}if type({src}) is not {self.const(plan.cls)}:", f"{p}    raise _Anomaly"]
        chain = (*chain, plan.cls)
        if _native(plan):
            # orjson writes such an instance itself, from its __dict__: only check it
            tests = [_enc_cond(f.type, f"{src}.{f.name}") for f in plan.fields if f.type]
            lines += [f"{p}if {' or '.join(t for t in tests if t)}:", f"{p}    raise _Anomaly"]
            return lines if out == src else [*lines, f"{p}{out} = {src}"]
        present = [f for f in plan.fields if not f.optional]
        temps = [self.fresh("a") for _ in present]
        conds: list[str] = []
        checks: list[str] = []
        for f, v in zip(present, temps, strict=True):
            assert f.type is not None
            lines.append(f"{p}{v} = {src}.{f.name}")
            # Every check also refuses None, which only a ``T | None`` field
            # may hold: the walker then omits it (field with a default) or
            # refuses it (required field).
            cond = _enc_cond(f.type, v)
            if cond is not None:
                conds.append(cond)
            else:
                checks += self.enc_val(f.type, v, ind, chain)
        if conds:
            lines += [f"{p}if {' or '.join(conds)}:", f"{p}    raise _Anomaly"]
        lines += checks
        items = ", ".join(f"{f.name!r}: {v}" for f, v in zip(present, temps, strict=True))
        lines.append(f"{p}{out} = {{{items}}}")
        for f in plan.fields:
            if f.optional:
                assert f.type is not None
                v = self.fresh("a")
                if _enc_cond(f.type.inner, v) == f"{v} is None":
                    # nothing to check or convert: test the attribute itself
                    # (an ``is not None`` jump), read it again when it is set
                    lines += [
                        f"{p}if {src}.{f.name} is not None:",
                        f"{p}    {out}[{f.name!r}] = {src}.{f.name}",
                    ]
                    continue
                lines += [f"{p}{v} = {src}.{f.name}", f"{p}if {v} is not None:"]
                lines += self.enc_val(f.type.inner, v, ind + 4, chain)
                lines.append(f"{p}    {out}[{f.name!r}] = {v}")
        return lines

    def enc_val(self, t: _Type, var: str, ind: int, chain: tuple[type[Any], ...]) -> list[str]:
        """Lines that check ``var`` (raising ``_Anomaly``) and rebind it to its JSON form."""
        p = " " * ind
        cond = _enc_cond(t, var)
        if cond is not None:
            return [f"{p}if {cond}:", f"{p}    raise _Anomaly"]
        k = t.kind
        if k == "bytes":
            return [f"{p}{var} = _b64e({var})"]
        if k == "dc":
            if self.can_inline(t.cls, chain, True):
                assert t.cls is not None
                plan = _plan(t.cls)
                if _native(plan):
                    return self.enc_obj(plan, var, var, ind, chain)
                out = self.fresh("o")
                return [*self.enc_obj(plan, var, out, ind, chain), f"{p}{var} = {out}"]
            assert t.cls is not None
            return [f"{p}{var} = {self.name('E', t.cls)}({var})"]
        if k == "opt":
            return [f"{p}if {var} is not None:", *self.enc_val(t.inner, var, ind + 4, chain)]
        is_dict = k == "dict"
        lines = [f"{p}if type({var}) is not {k}:", f"{p}    raise _Anomaly"]
        item = t.inner
        src = f"{var}.values()" if is_dict else var
        scalar, optional = _scalar_kind(item)
        if scalar in ("str", "int", "bool"):
            return lines  # trusted, like scalar fields
        if scalar == "float":
            # checked even when other scalars are trusted: orjson would
            # write NaN and infinities as null
            tset = self.const(self.tset(scalar, optional))
            finite = "_finite_opt" if optional else "_finite"
            return lines + [
                f"{p}if not {tset}.issuperset(map(type, {src})) or not {finite}({src}):",
                f"{p}    raise _Anomaly",
            ]
        it = self.fresh("i")
        if item.kind == "dc" and self.can_inline(item.cls, chain, True):
            assert item.cls is not None
            plan, acc, out = _plan(item.cls), self.fresh("l"), self.fresh("o")
            if _native(plan):
                # orjson writes the items themselves: check them, keep the container
                return lines + [
                    f"{p}for {it} in {src}:",
                    *self.enc_obj(plan, it, it, ind + 4, chain),
                ]
            if is_dict:
                key = self.fresh("k")
                lines += [f"{p}{acc} = {{}}", f"{p}for {key}, {it} in {var}.items():"]
                lines += self.enc_obj(plan, it, out, ind + 4, chain)
                lines += [f"{p}    {acc}[{key}] = {out}"]
            else:
                lines += [f"{p}{acc} = []", f"{p}for {it} in {var}:"]
                lines += self.enc_obj(plan, it, out, ind + 4, chain)
                lines += [f"{p}    {acc}.append({out})"]
            return lines + [f"{p}{var} = {acc}"]
        if not item.needs_encoding():
            # nested containers of scalars: check every item, keep the container
            return lines + [f"{p}for {it} in {src}:", *self.enc_val(item, it, ind + 4, chain)]
        conv = self.enc_conv(item)
        if is_dict:
            return lines + [f"{p}{var} = dict(zip({var}, map({conv}, {var}.values())))"]
        return lines + [f"{p}{var} = list(map({conv}, {var}))"]

    def enc_conv(self, t: _Type) -> str:
        if t.kind == "dc":
            assert t.cls is not None
            return self.name("E", t.cls)
        if t.kind == "bytes":
            return "_b64e"
        return self.function("y", t, lambda: self.enc_val(t, "x", 4, ()))

    def encoder(self, plan: _Class) -> None:
        lines = [f"def {self.name('E', plan.cls)}(o):"]
        lines += self.enc_obj(plan, "o", "d", 4, ())
        lines.append("    return d")
        self.blocks.append("\n".join(lines))
        # the entry point: object in, bytes out, one frame.  ``encode`` picked
        # it by ``type(o)``, so the body's class test is left out.
        body = self.enc_obj(plan, "o", "d", 8, ())[2:]
        lines = [f"def {self.name('B', plan.cls)}(o):", "    try:", *body]
        lines += [
            "        return _dumps(d, None, _DUMPS_OPTIONS)",
            "    except Exception:",
            "        # unusual or wrong: the walker encodes it or says exactly why not",
            "        return _encode_slow(o)",
        ]
        self.blocks.append("\n".join(lines))

    # -- fast decoder ------------------------------------------------------

    def field_lines(
        self,
        spec: _Field,
        src: str,
        v: str,
        ind: int,
        check: Callable[[_Type, str, int], list[str]],
    ) -> list[str]:
        """Read field ``spec`` of dict ``src`` into ``v``: defaults, then ``check``."""
        p = " " * ind
        key = repr(spec.name)
        t = spec.type
        assert t is not None
        if spec.required and not spec.optional:
            return [f"{p}{v} = {src}[{key}]", *check(t, v, ind)]
        # ``in`` first: optional fields are mostly absent, and a test is
        # cheaper than a ``get`` call
        if spec.factory is not dataclasses.MISSING:
            fill = f"{self.const(spec.factory)}()"
        elif spec.required:  # a ``T | None`` field without default: absent is None
            fill = "None"
        else:
            fill = _literal(spec.default) or self.const(spec.default)
        return [
            f"{p}if {key} in {src}:",
            f"{p}    {v} = {src}[{key}]",
            *check(t, v, ind + 4),
            f"{p}else:",
            f"{p}    {v} = {fill}",
        ]

    def construct(
        self, plan: _Class, values: list[tuple[_Field, str]], out: str, ind: int
    ) -> list[str]:
        p = " " * ind
        cname = self.const(plan.cls)
        if _direct_construct(plan.cls):
            # a partial of object.__new__ per class allocates a little faster
            alloc = self.const(functools.partial(object.__new__, plan.cls))
            return [f"{p}{out} = {alloc}()"] + [f"{p}{out}.{spec.name} = {v}" for spec, v in values]
        args = ", ".join(f"{spec.name}={v}" if spec.kw_only else v for spec, v in values)
        return [f"{p}{out} = {cname}({args})"]

    def ordered(self, plan: _Class) -> list[_Field]:
        """The fields in definition order (the constructor's order)."""
        by_name = {f.name: f for f in plan.fields}
        return [by_name[f.name] for f in dataclasses.fields(plan.cls)]

    def dec_obj(
        self, plan: _Class, src: str, out: str, ind: int, chain: tuple[type[Any], ...]
    ) -> list[str]:
        """Lines that validate dict ``src`` and build a ``plan.cls`` in ``out``."""
        p = " " * ind
        chain = (*chain, plan.cls)
        fields = self.ordered(plan)
        values = {spec.name: self.fresh("a") for spec in fields}
        required = [f for f in fields if f.required and not f.optional]
        lines: list[str] = []
        if not required:
            lines = [f"{p}if type({src}) is not dict:", f"{p}    raise _Anomaly"]
        # else reading a required field first checks ``src``: subscripting
        # anything else orjson makes (list, str, number, None) with a str
        # raises TypeError, and the fast path gives up.
        conds: list[str] = []  # type tests of required scalars, joined into one ``if``
        for spec in sorted(fields, key=lambda f: f not in required):
            v = values[spec.name]
            t = spec.type
            assert t is not None
            if spec.required and t.kind in ("str", "int", "bool"):
                lines.append(f"{p}{v} = {src}[{spec.name!r}]")
                conds.append(f"type({v}) is not {t.kind}")
                continue
            lines += self.field_lines(
                spec, src, v, ind, lambda t, var, i: self.dec_val(t, var, i, chain)
            )
        if conds:
            lines += [f"{p}if {' or '.join(conds)}:", f"{p}    raise _Anomaly"]
        return lines + self.construct(plan, [(f, values[f.name]) for f in fields], out, ind)

    def dec_val(self, t: _Type, var: str, ind: int, chain: tuple[type[Any], ...]) -> list[str]:
        """Lines that validate ``var`` (raising ``_Anomaly``) and rebind it to its value."""
        p = " " * ind
        k = t.kind
        if k in ("str", "int", "bool"):
            return [f"{p}if type({var}) is not {k}:", f"{p}    raise _Anomaly"]
        if k == "float":
            return [
                f"{p}if type({var}) is not float:",
                f"{p}    if type({var}) is not int:",
                f"{p}        raise _Anomaly",
                f"{p}    {var} = float({var})",
            ]
        if k == "bytes":
            return [f"{p}{var} = _b64d({var})"]
        if k == "dc":
            assert t.cls is not None
            if self.can_inline(t.cls, chain, False):
                return self.dec_obj(_plan(t.cls), var, var, ind, chain)
            return [f"{p}{var} = {self.name('D', t.cls)}({var})"]
        if k == "opt":
            if t.inner.kind in ("str", "int", "bool"):
                return [
                    f"{p}if type({var}) is not {t.inner.kind} and {var} is not None:",
                    f"{p}    raise _Anomaly",
                ]
            return [f"{p}if {var} is not None:", *self.dec_val(t.inner, var, ind + 4, chain)]
        is_dict = k == "dict"
        lines = [f"{p}if type({var}) is not {k}:", f"{p}    raise _Anomaly"]
        item = t.inner
        src = f"{var}.values()" if is_dict else var
        scalar, optional = _scalar_kind(item)
        if scalar in ("str", "int", "bool"):
            # orjson made this container: when every item has the right
            # type it is used as it is
            tset = self.const(self.tset(scalar, optional))
            return lines + [
                f"{p}if not {tset}.issuperset(map(type, {src})):",
                f"{p}    raise _Anomaly",
            ]
        rebuild = (
            f"dict(zip({var}, map({{conv}}, {var}.values())))"
            if is_dict
            else f"list(map({{conv}}, {var}))"
        )
        if scalar == "float":
            seen = self.fresh("s")
            conv = self.dec_conv(item)
            return lines + [
                f"{p}{seen} = set(map(type, {src}))",
                f"{p}if not {seen} <= {self.const(self.tset(scalar, optional))}:",
                f"{p}    raise _Anomaly",
                f"{p}if int in {seen}:",
                f"{p}    {var} = {rebuild.format(conv=conv)}",
            ]
        it = self.fresh("i")
        if item.kind == "dc" and self.can_inline(item.cls, chain, False):
            assert item.cls is not None
            plan, acc = _plan(item.cls), self.fresh("l")
            if is_dict:
                key = self.fresh("k")
                lines += [f"{p}{acc} = {{}}", f"{p}for {key}, {it} in {var}.items():"]
                lines += self.dec_obj(plan, it, it, ind + 4, chain)
                lines += [f"{p}    {acc}[{key}] = {it}"]
            else:
                lines += [f"{p}{acc} = []", f"{p}for {it} in {var}:"]
                lines += self.dec_obj(plan, it, it, ind + 4, chain)
                lines += [f"{p}    {acc}.append({it})"]
            return lines + [f"{p}{var} = {acc}"]
        if _dec_identity(item):
            return lines + [f"{p}for {it} in {src}:", *self.dec_val(item, it, ind + 4, chain)]
        return lines + [f"{p}{var} = {rebuild.format(conv=self.dec_conv(item))}"]

    def dec_conv(self, t: _Type) -> str:
        if t.kind == "dc":
            assert t.cls is not None
            return self.name("D", t.cls)
        if t.kind == "bytes":
            return "_b64d"
        return self.function("F", t, lambda: self.dec_val(t, "x", 4, ()))

    def decoder(self, plan: _Class) -> None:
        lines = [f"def {self.name('D', plan.cls)}(d):"]
        lines += self.dec_obj(plan, "d", "d", 4, ())
        lines.append("    return d")
        self.blocks.append("\n".join(lines))
        # the entry point: bytes in, one frame (the body again, inlined)
        lines = [f"def {self.name('L', plan.cls)}(data):", "    try:", "        d = _loads(data)"]
        lines += self.dec_obj(plan, "d", "d", 8, ())
        lines += [
            "        return d",
            "    except Exception:",
            "        # not JSON, or not valid: the slow path says exactly why",
            f"        return _decode_slow({self.const(plan.cls)}, data)",
        ]
        self.blocks.append("\n".join(lines))

    # -- precise decoder ---------------------------------------------------

    def chk_lines(self, t: _Type, var: str, ind: int) -> list[str]:
        """Like ``dec_val``, raising ``_Invalid`` that says what is wrong."""
        p = " " * ind
        k = t.kind
        if k in ("str", "int", "bool"):
            return [
                f"{p}if type({var}) is not {k}:",
                f"{p}    raise _Invalid(_expected({_DESC[k]!r}, {var}))",
            ]
        if k == "float":
            return [
                f"{p}if type({var}) is not float:",
                f"{p}    if type({var}) is not int:",
                f"{p}        raise _Invalid(_expected('a number', {var}))",
                f"{p}    {var} = float({var})",
            ]
        if k == "bytes":
            return [f"{p}{var} = _b64d({var})"]
        if k == "dc":
            assert t.cls is not None
            return [f"{p}{var} = {self.name('d', t.cls)}({var})"]
        if k == "opt":
            return [f"{p}if {var} is not None:", *self.chk_lines(t.inner, var, ind + 4)]
        is_dict = k == "dict"
        what = "an object" if is_dict else "an array"
        conv = self.chk_conv(t.inner)
        rebuild = (
            f"dict(zip({var}, map({conv}, {var}.values())))"
            if is_dict
            else f"list(map({conv}, {var}))"
        )
        error = f"{'_value_error' if is_dict else '_item_error'}({var}, {conv})"
        return [
            f"{p}if type({var}) is not {k}:",
            f"{p}    raise _Invalid(_expected({what!r}, {var}))",
            f"{p}try:",
            f"{p}    {var} = {rebuild}",
            f"{p}except _Invalid:",
            f"{p}    {error}",
        ]

    def chk_conv(self, t: _Type) -> str:
        if t.kind == "dc":
            assert t.cls is not None
            return self.name("d", t.cls)
        if t.kind == "bytes":
            return "_b64d"
        return self.function("c", t, lambda: self.chk_lines(t, "x", 4))

    def precise(self, plan: _Class) -> None:
        cls = plan.cls
        lines = [
            f"def {self.name('d', cls)}(d):",
            "    if type(d) is not dict:",
            "        raise _Invalid(_expected('an object', d))",
            "    f = None",
            "    try:",
        ]
        values: list[tuple[_Field, str]] = []
        for spec in self.ordered(plan):
            v = f"v_{spec.name}"
            lines.append(f"        f = {spec.name!r}")
            lines += self.field_lines(spec, "d", v, 8, self.chk_lines)
            values.append((spec, v))
        if not values:
            lines.append("        pass")
        lines += [
            "    except KeyError:",
            "        raise _Invalid('missing required field', [f]) from None",
            "    except _Invalid as e:",
            "        e.path.append(f)",
            "        raise",
            "    try:",
            *self.construct(plan, values, "o", 8),
            "    except Exception as exc:",
            "        # the class may validate its own values: a refusal is a decode error",
            f"        raise _Invalid(f'{cls.__name__} refused the values: "
            "{type(exc).__name__}: {exc}') from exc",
            "    return o",
        ]
        self.blocks.append("\n".join(lines))

    def source(self) -> str:
        return "\n\n\n".join(self.blocks) + "\n"


def _scalar_kind(t: _Type) -> tuple[str | None, bool]:
    """``(kind, optional)`` when ``t`` is a scalar checked by type alone, else ``(None, _)``."""
    optional = t.kind == "opt"
    base = t.inner if optional else t
    if base.kind in ("str", "int", "bool", "float"):
        return base.kind, optional
    return None, optional


def _fallback_decoder(cls: type[Any]) -> Callable[[Any], Any]:
    def decode_with_dacite(raw: Any) -> Any:
        try:
            return build(cls, raw)
        except BuildError as exc:
            raise _Invalid(exc.message, [exc.path] if exc.path else []) from exc

    return decode_with_dacite


def _compile(root: type[Any]) -> None:
    """Generate, exec and publish the codec functions of ``root`` and its new dependencies."""
    unit: list[_Class] = []
    seen: set[type[Any]] = set()
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls in seen or cls in _ENCODERS:
            continue
        seen.add(cls)
        plan = _plan(cls)
        unit.append(plan)
        for f in plan.fields:
            todo.extend(_dataclasses_in(f.type))
    gen = _Gen()
    for plan in unit:
        if plan.encode_fallback is None:
            gen.encoder(plan)
        else:
            _NS[gen.name("E", plan.cls)] = functools.partial(_walk_object, plan, path=None)
            _NS[gen.name("B", plan.cls)] = _encode_slow
        if plan.decode_fallback is None:
            gen.decoder(plan)
            gen.precise(plan)
        else:
            fallback = _fallback_decoder(plan.cls)
            _NS[gen.name("D", plan.cls)] = _NS[gen.name("d", plan.cls)] = fallback
            _NS[gen.name("L", plan.cls)] = functools.partial(_decode_slow, plan.cls)
    src = gen.source()
    filename = f"<trustgraph_schema.codec:{root.__qualname__}:{unit[0].ident}>"
    # Keep the source for tracebacks and for anyone reading a profile.
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    exec(compile(src, filename, "exec"), _NS)
    for plan in unit:
        _SOURCES[plan.cls] = src
        _ENCODERS[plan.cls] = _NS[gen.name("E", plan.cls)]
        _ENTRIES[plan.cls] = _NS[gen.name("B", plan.cls)]
        _DECODERS[plan.cls] = _NS[gen.name("L", plan.cls)]
        _PRECISE[plan.cls] = _NS[gen.name("d", plan.cls)]


def _encoder(cls: type[Any]) -> Callable[[Any], Any]:
    with _LOCK:
        if cls not in _ENCODERS:
            _compile(cls)
        return _ENCODERS[cls]


def _decoder(cls: type[Any]) -> Callable[[Any], Any]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise SchemaError(f"{cls!r} is not a dataclass: schemas are @dataclass classes")
    with _LOCK:
        if cls not in _DECODERS:
            _compile(cls)
        return _DECODERS[cls]


def check_schema(cls: type[Any]) -> None:
    """Compile the codec of ``cls`` now; raise ``SchemaError`` if it cannot be one.

    Producers and consumers call it when they are created, so that a bad
    schema fails there and not on the first message.
    """
    _decoder(cls)


def generated_source(cls: type[Any]) -> str:
    """The Python source generated with ``cls`` (for debugging and curiosity)."""
    _decoder(cls)
    return _SOURCES[cls]


# --------------------------------------------------------------------------
# The strict walker: arbiter of the encode fast path, and the encoder of
# classes that do not compile.


def _enc_error(message: str, path: list[str]) -> EncodeError:
    return EncodeError(message, ".".join(path).replace(".[", "["))


def _wrong(what: str, value: Any, path: list[str]) -> EncodeError:
    return _enc_error(f"expected {what}, got {type(value).__name__}", path)


def _walk_object(plan: _Class, obj: Any, path: list[str] | None) -> dict[str, Any]:
    if path is None:
        path = []
    if not isinstance(obj, plan.cls):
        raise _wrong(plan.cls.__name__, obj, path)
    out: dict[str, Any] = {}
    for f in plan.fields:
        value = getattr(obj, f.name)
        if value is None:
            if f.required and f.type is not None and not f.optional:
                raise _enc_error(
                    f"required field of {plan.cls.__name__} is None "
                    "(only a T | None field may be None)",
                    [*path, f.name],
                )
            continue
        path.append(f.name)
        if f.type is None:
            out[f.name] = _plain(value, path)
        else:
            out[f.name] = _walk_value(f.type.inner if f.optional else f.type, value, path)
        path.pop()
    return out


def _walk_value(t: _Type, value: Any, path: list[str]) -> Any:
    k = t.kind
    if k == "opt":
        return None if value is None else _walk_value(t.inner, value, path)
    if k == "str":
        if not isinstance(value, str):
            raise _wrong("str", value, path)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _enc_error("string is not valid unicode (lone surrogate)", path) from None
        return value
    if k in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float) if k == "float" else int):
            raise _wrong(k, value, path)
        if isinstance(value, int) and not _INT_MIN <= value < _INT_END:
            raise _enc_error("integer does not fit in 64 bits", path)
        if isinstance(value, float) and not math.isfinite(value):
            raise _enc_error("NaN and infinities are not JSON numbers", path)
        return value
    if k == "bool":
        if not isinstance(value, bool):
            raise _wrong("bool", value, path)
        return value
    if k == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise _wrong("bytes", value, path)
        return _b64e(value)
    if k == "dc":
        assert t.cls is not None
        return _walk_object(_plan(t.cls), value, path)
    if k == "list":
        if not isinstance(value, (list, tuple)):
            raise _wrong("list", value, path)
        out = []
        for i, item in enumerate(value):
            path.append(f"[{i}]")
            out.append(_walk_value(t.inner, item, path))
            path.pop()
        return out
    # dict
    if not isinstance(value, Mapping):
        raise _wrong("dict", value, path)
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _enc_error(f"dict keys must be str, got {type(key).__name__}", path)
        path.append(f"[{key!r}]")
        result[key] = _walk_value(t.inner, item, path)
        path.pop()
    return result


def _plain(value: Any, path: list[str]) -> Any:
    """Generic conversion for a field type the compiler does not handle."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _walk_object(_plan(type(value)), value, path)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _b64e(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, path) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v, path) for k, v in value.items()}
    return value  # orjson writes enums, UUIDs ... or says why it cannot


def _encode_slow(obj: Any) -> bytes:
    """Encode with the strict walker: odd-but-valid values pass, anything else is named."""
    try:
        tree = _walk_object(_plan(type(obj)), obj, [])
        return _dumps(tree, None, _DUMPS_OPTIONS)
    except RecursionError:
        raise EncodeError(
            f"{type(obj).__name__} is nested too deeply or refers to itself"
        ) from None
    except TypeError as exc:
        if isinstance(exc, EncodeError):
            raise
        raise EncodeError(f"{type(obj).__name__} cannot be written as JSON: {exc}") from exc


def _entry(obj: Any) -> Callable[[Any], bytes]:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise EncodeError(f"encode takes a dataclass instance, got {type(obj).__name__}")
    _encoder(type(obj))
    return _ENTRIES[type(obj)]


# --------------------------------------------------------------------------
# The API


def encode(obj: Any) -> bytes:
    """Encode a dataclass instance as compact JSON (None fields left out).

    Raises ``EncodeError`` (a ``TypeError``) naming the field at fault.
    """
    try:
        fn = _ENTRIES[type(obj)]
    except KeyError:
        fn = _entry(obj)  # first use of the class, or not a dataclass at all
    return fn(obj)


def decode(cls: type[T], data: bytes | bytearray | memoryview | str) -> T:
    """Decode JSON ``data`` into an instance of the dataclass ``cls``.

    Raises ``DecodeError`` with ``path`` naming the field at fault, and
    ``SchemaError`` when ``cls`` is not a usable schema.
    """
    try:
        fn = _DECODERS[cls]
    except (KeyError, TypeError):  # TypeError: not even hashable
        fn = _decoder(cls)
    return fn(data)  # type: ignore[no-any-return]


def decoder(cls: type[T]) -> Callable[[bytes | bytearray | memoryview | str], T]:
    """The decoder of ``cls`` itself: ``decoder(cls)(data) == decode(cls, data)``.

    It saves the lookup ``decode`` does on every call; hot paths that decode
    one schema over and over (a consumer) keep it.
    """
    return _decoder(cls)


def _decode_slow(cls: type[T], data: bytes | bytearray | memoryview | str) -> T:
    """Parse and decode again, slowly, to say exactly what is wrong."""
    try:
        raw = _loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON ({exc})") from exc
    return _decode_precise(cls, raw)


def _decode_precise(cls: type[T], raw: Any) -> T:
    """Decode again, slowly, to say exactly what is wrong (the fast path gave up)."""
    try:
        return _PRECISE[cls](raw)  # type: ignore[no-any-return]
    except _Invalid as exc:
        raise DecodeError(exc.message, _join(exc.path)) from None
    except RecursionError:
        raise DecodeError("message is nested too deeply") from None


_NS["_decode_slow"] = _decode_slow
_NS["_encode_slow"] = _encode_slow
_NS["_dumps"] = _dumps
_NS["_DUMPS_OPTIONS"] = _DUMPS_OPTIONS
