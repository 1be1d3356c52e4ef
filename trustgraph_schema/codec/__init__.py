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

The package, one job a module:

* ``analysis``: type hints -> a type tree and a plan per class (``_plan``);
* ``registry``: the caches (plans, generated functions, sources) and the lock;
* ``runtime``: the namespace the generated code runs in and its helpers;
* ``generate``: the generators' shared base; ``encoders`` and ``decoders``
  write the encoder and the decoder source;
* ``compiler``: generates, ``exec``s and caches a class's functions;
* ``slow``: the strict walker, the precise and dacite decoders (the paths
  taken when the fast ones give up);
* here: the public functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .._reference import reference_decode
from .analysis import _plan as _plan
from .compiler import _decoder, _entry
from .registry import _DECODERS, _ENTRIES, _SOURCES
from .registry import _ENCODERS as _ENCODERS
from .slow import _decode_precise as _decode_precise
from .slow import _encode_slow as _encode_slow

__all__ = ["check_schema", "decode", "decoder", "encode", "reference_decode"]

T = TypeVar("T")


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
