"""What the generated code runs with: its namespace ``_NS`` and the helpers it calls.

``_NS`` is the globals dict every generated function is ``exec``'d in: it
starts with the helpers below; the generators add the constants they name
(``K<n>``), the compiler the functions it generates and the fallbacks of
classes that do not compile, and ``slow`` its slow paths.  ``_Invalid``
(a decode error and its path) and ``_Anomaly`` (the fast encoder gives up)
are the two signals the generated code raises.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import orjson

from .analysis import _NoneType


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
