"""The slow paths: what runs when the generated fast path gives up or cannot exist.

The strict walker encodes a message the fast encoder refused (or a class
that does not compile) and names the field at fault in ``EncodeError``;
``_decode_slow``/``_decode_precise`` parse again and run the precise
decoder to name the field at fault in ``DecodeError``; classes that do not
compile decode with dacite (``_fallback_decoder``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson

from .._reference import BuildError, build
from ..errors import DecodeError, EncodeError
from .analysis import _Class, _plan, _Type
from .registry import _PRECISE
from .runtime import _NS, _b64e, _Invalid, _join

T = TypeVar("T")

_dumps = orjson.dumps
_loads = orjson.loads
#: orjson would write a datetime as text: refuse it instead (no schema type
#: reads it back), so the walker names the field.
_DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME
_INT_MIN, _INT_END = -(2**63), 2**64


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


# --------------------------------------------------------------------------
# Decoding, slowly: dacite for classes that do not compile, and the precise
# decoder that says what is wrong when the fast one gave up.


def _fallback_decoder(cls: type[Any]) -> Callable[[Any], Any]:
    def decode_with_dacite(raw: Any) -> Any:
        try:
            return build(cls, raw)
        except BuildError as exc:
            raise _Invalid(exc.message, [exc.path] if exc.path else []) from exc

    return decode_with_dacite


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


# what the generated entry points (``B<n>``, ``L<n>``) call besides ``runtime``'s helpers
_NS["_decode_slow"] = _decode_slow
_NS["_encode_slow"] = _encode_slow
_NS["_dumps"] = _dumps
_NS["_DUMPS_OPTIONS"] = _DUMPS_OPTIONS
