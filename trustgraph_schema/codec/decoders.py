"""Decoder generation: the source of each class's fast, entry-point and precise decoders.

Per dataclass it writes ``D<n>`` (JSON tree -> object, raising
``_Anomaly``), ``L<n>`` (bytes -> object, what ``decode`` calls; it hands
a failure to ``slow._decode_slow``) and ``d<n>`` (the precise decoder, one
function per class, raising ``_Invalid`` with the field path).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

from .analysis import _Class, _Field, _plan, _Type
from .generate import _GenBase, _scalar_kind

_DESC = {"str": "a string", "int": "an integer", "bool": "a boolean"}


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


def _literal(value: Any) -> str | None:
    """Source text for a simple immutable default (a constant beats a global lookup)."""
    if (
        value is None
        or type(value) in (bool, int, str)
        or (type(value) is float and math.isfinite(value))
    ):
        return repr(value)
    return None


def _dec_identity(t: _Type) -> bool:
    """Whether a decoded value is the parsed JSON itself (only checked, never rebuilt)."""
    if t.kind in ("str", "int", "bool"):
        return True
    if t.kind in ("opt", "list", "dict"):
        return _dec_identity(t.inner)
    return False


class _DecGen(_GenBase):
    """The decode half of ``compiler._Gen``: writes ``D<n>``, ``L<n>`` and ``d<n>``."""

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
