"""Compilation: generate, ``exec`` and cache the codec functions of a class.

``_compile`` takes a class and the dataclasses it reaches that are not
compiled yet, has ``_Gen`` write their source (or wires in the walker and
dacite for those that do not compile), ``exec``s it in ``runtime._NS`` and
publishes the functions in the ``registry``; ``_encoder``/``_decoder``/
``_entry`` do that once per class, under the lock.
"""

from __future__ import annotations

import dataclasses
import functools
import linecache
from collections.abc import Callable
from typing import Any

from ..errors import EncodeError, SchemaError
from .analysis import _Class, _dataclasses_in, _plan
from .decoders import _DecGen
from .encoders import _EncGen
from .registry import _DECODERS, _ENCODERS, _ENTRIES, _LOCK, _PRECISE, _SOURCES
from .runtime import _NS
from .slow import _decode_slow, _encode_slow, _fallback_decoder, _walk_object


class _Gen(_EncGen, _DecGen):
    """Writes the source of one compilation unit (a class and its new dependencies).

    Per dataclass ``C`` it emits ``E<n>`` (fast encoder), ``D<n>`` (fast
    decoder) and ``d<n>`` (precise decoder).  The fast ones inline nested
    dataclasses up to ``_MAX_INLINE`` levels (loops instead of a call per
    list item) and raise ``_Anomaly`` without saying why; the precise
    decoder calls one function per class and records the path, and runs
    only after the fast one gave up.  The encode half is written by
    ``encoders._EncGen``, the decode half by ``decoders._DecGen``; they
    share the state of ``generate._GenBase``, so one instance names and
    orders the source exactly as a single class would.
    """


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


def _entry(obj: Any) -> Callable[[Any], bytes]:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise EncodeError(f"encode takes a dataclass instance, got {type(obj).__name__}")
    _encoder(type(obj))
    return _ENTRIES[type(obj)]
