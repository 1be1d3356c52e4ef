"""The reference decoder: dacite, configured to follow the wire contract.

``trustgraph_schema.codec`` compiles a specialised decoder per dataclass.
This module is the slow, obviously-correct yardstick it is tested against,
and the fallback for classes the compiler does not handle (an ``Enum``,
``tuple``, ``Literal`` or a union of several types, ``InitVar`` or
``init=False`` fields).  Both follow the same rules:

* JSON types are exact: ``true`` is not an integer, ``1`` is not a string;
  a ``float`` field accepts an integer and stores it as a float;
* ``bytes`` travel as strict base64 text;
* a missing ``T | None`` field is ``None``, a missing field with a default
  takes the default, unknown keys are ignored;
* ``null`` is only accepted where the type is ``T | None``.

Errors name the field path as dacite reports it (``values.key``; dacite does
not know list indexes) and never quote the offending value, which could be a
secret.
"""

from __future__ import annotations

import binascii
from enum import Enum
from typing import Any, TypeVar

import dacite
import orjson

from .errors import DecodeError

T = TypeVar("T")

__all__ = ["BuildError", "build", "reference_decode"]


def _int_hook(value: Any) -> Any:
    # dacite checks with isinstance, and bool is an int subclass: refuse it here.
    if type(value) is bool:
        raise dacite.WrongTypeError(field_type=int, value=value)
    return value


def _float_hook(value: Any) -> Any:
    # JSON does not tell 1 from 1.0; a float field takes an integer as a
    # float.  dacite follows the numeric tower and would take a bool too.
    if type(value) is int:
        return float(value)
    if type(value) is bool:
        raise dacite.WrongTypeError(field_type=float, value=value)
    return value


def _bytes_hook(value: Any) -> Any:
    if type(value) is not str:
        return value  # dacite's type check then reports the wrong type
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except ValueError:
        raise dacite.WrongTypeError(field_type=bytes, value=value) from None


_CONFIG = dacite.Config(
    type_hooks={int: _int_hook, float: _float_hook, bytes: _bytes_hook},
    cast=[Enum, tuple],
)


def _describe(exc: Exception) -> str:
    # Never str(exc): dacite's messages quote the value, which may be a secret.
    if isinstance(exc, dacite.MissingValueError):
        return "missing required field"
    if isinstance(exc, dacite.UnionMatchError):
        return "value matches no type of the union"
    if isinstance(exc, dacite.WrongTypeError):
        expected = getattr(exc.field_type, "__name__", None) or str(exc.field_type)
        return f"wrong type: expected {expected}, got {type(exc.value).__name__}"
    if isinstance(exc, dacite.ForwardReferenceError):
        return f"cannot resolve a type hint: {exc.message}"
    return f"invalid value ({type(exc).__name__})"


class BuildError(Exception):
    """A dacite build failed: ``message`` says why, ``path`` (dotted) where."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def build(cls: type[T], raw: Any) -> T:
    """Build ``cls`` from already-parsed JSON with dacite; raise ``BuildError``."""
    if type(raw) is not dict:
        raise BuildError(f"expected an object for {cls.__name__}, got {type(raw).__name__}")
    try:
        return dacite.from_dict(cls, raw, config=_CONFIG)
    except dacite.DaciteFieldError as exc:
        raise BuildError(_describe(exc), exc.field_path or "") from exc
    except RecursionError:
        raise BuildError("message is nested too deeply") from None
    except Exception as exc:  # dacite lets TypeError/ValueError out of odd inputs
        raise BuildError(_describe(exc)) from exc


def reference_decode(cls: type[T], data: bytes | bytearray | memoryview | str) -> T:
    """Decode ``data`` into ``cls`` the slow, reference way (dacite).

    Same contract as ``codec.decode``; used by the tests as the yardstick for
    the compiled decoder.
    """
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON ({exc})") from exc
    try:
        return build(cls, raw)
    except BuildError as exc:
        raise DecodeError(exc.message, exc.path) from exc
