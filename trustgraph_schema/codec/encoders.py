"""Encoder generation: the source of each class's fast encoder and its bytes entry point.

Per dataclass it writes ``E<n>`` (object -> JSON-ready tree, called for
nested classes that are not inlined) and ``B<n>`` (object -> bytes, what
``encode`` calls), both raising ``_Anomaly`` for the strict walker in
``slow`` when a value is unusual or wrong.
"""

from __future__ import annotations

from typing import Any

from .analysis import _Class, _plan, _Type
from .generate import _GenBase, _scalar_kind


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


class _EncGen(_GenBase):
    """The encode half of ``compiler._Gen``: writes ``E<n>`` and ``B<n>``."""

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
