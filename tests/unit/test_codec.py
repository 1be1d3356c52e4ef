"""The wire codec: rules, errors, and the compiled path held to the dacite reference."""

from __future__ import annotations

import base64
import dataclasses
import enum
import itertools
import json
import threading
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Literal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustgraph_schema import (
    IRI,
    LITERAL,
    TRIPLE,
    ConfigRequest,
    ConfigValue,
    DecodeError,
    EncodeError,
    SchemaError,
    Term,
    Triple,
    check_schema,
    codec,
    decode,
    decoder,
    encode,
    reference_decode,
)

# -- schemas used below ---------------------------------------------------------


@dataclass
class Inner:
    name: str
    tags: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass
class Everything:
    id: str
    count: int = 0
    ratio: float = 0.0
    flag: bool = False
    text: str = ""
    blob: bytes = b""
    inners: list[Inner] = field(default_factory=list)
    matrix: list[list[int]] = field(default_factory=list)
    table: dict[str, list[float]] = field(default_factory=dict)
    by_name: dict[str, Inner] = field(default_factory=dict)
    blobs: list[bytes] = field(default_factory=list)
    maybe: list[int | None] = field(default_factory=list)
    optional: str | None = None
    optional_inner: Inner | None = None
    optional_blob: bytes | None = None


@dataclass(frozen=True)
class FrozenPoint:
    x: int
    y: int = 0


@dataclass(slots=True)
class SlotsPoint:
    x: int
    label: str | None = None


@dataclass
class Validated:
    """A class that checks its own values."""

    port: int

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError("port out of range")


@dataclass
class WithSecret:
    user: str
    password: str
    attempts: int = 0
    score: float = 0.0


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Uncompiled:
    """Field types the compiler leaves to the walker and dacite."""

    colour: Colour
    pair: tuple[int, int]
    either: int | str
    mode: Literal["a", "b"] = "a"
    inner: Inner | None = None


def wire(obj: Any) -> Any:
    return json.loads(encode(obj))


# -- the wire rules ---------------------------------------------------------------


def test_none_fields_are_absent_never_null() -> None:
    data = encode(ConfigRequest(operation="get", workspace="w"))
    assert data == b'{"operation":"get","workspace":"w"}'
    msg = Everything(id="x", inners=[Inner("a"), Inner("b", note="n")], optional_inner=Inner("c"))
    data = encode(msg)
    assert b"null" not in data
    tree = json.loads(data)
    for absent in ("optional", "optional_blob"):
        assert absent not in tree
    assert "note" not in tree["inners"][0]
    assert tree["inners"][1]["note"] == "n"
    assert "note" not in tree["optional_inner"]


def test_empty_values_are_written() -> None:
    tree = wire(Everything(id="", optional="", optional_inner=Inner(""), optional_blob=b""))
    expected = {
        "id": "",
        "count": 0,
        "ratio": 0.0,
        "flag": False,
        "text": "",
        "blob": "",
        "inners": [],
        "matrix": [],
        "table": {},
        "by_name": {},
        "blobs": [],
        "maybe": [],
        "optional": "",
        "optional_inner": {"name": "", "tags": []},
        "optional_blob": "",
    }
    assert tree == expected


def test_round_trip_of_every_shape() -> None:
    msg = Everything(
        id="e1",
        count=-7,
        ratio=2.5,
        flag=True,
        text="text",
        blob=bytes(range(256)),
        inners=[Inner("a", ["x", "y"]), Inner("b", note="n")],
        matrix=[[1, 2], [], [3]],
        table={"a": [1.5, 2.0], "b": []},
        by_name={"k": Inner("k", ["t"])},
        blobs=[b"", b"\x00\xff"],
        maybe=[1, None, 3],
        optional="o",
        optional_inner=Inner("i"),
        optional_blob=b"ob",
    )
    assert decode(Everything, encode(msg)) == msg
    assert reference_decode(Everything, encode(msg)) == msg


def test_unicode_survives() -> None:
    text = 'héllo wörld – 日本語 – 🎉🚀 – עברית – "quoted" \\ back\\slash \x00 nul \n\t'
    msg = Inner(name=text, tags=[text[::-1], "ß"], note="ℕ")
    data = encode(msg)
    data.decode("utf-8")  # valid UTF-8
    assert json.loads(data)["name"] == text
    assert decode(Inner, data) == msg
    assert decode(Inner, data.decode("utf-8")) == msg  # str input too


def test_bytes_travel_as_base64_text() -> None:
    raw = bytes(range(256)) * 3
    tree = wire(Everything(id="b", blob=raw, blobs=[b"a", b""]))
    assert tree["blob"] == base64.b64encode(raw).decode("ascii")
    assert tree["blobs"] == ["YQ==", ""]
    assert decode(Everything, encode(Everything(id="b", blob=raw))).blob == raw
    for bad in ("!!!!", "YQ=", "é"):
        with pytest.raises(DecodeError) as err:
            decode(Everything, json.dumps({"id": "b", "blob": bad}))
        assert err.value.path == "blob"
        assert "base64" in str(err.value)
    with pytest.raises(DecodeError) as err:
        decode(Everything, json.dumps({"id": "b", "blobs": ["YQ==", 5]}))
    assert err.value.path == "blobs[1]"


def test_unknown_fields_are_ignored() -> None:
    data = json.dumps(
        {
            "id": "u",
            "future": {"deep": [1, 2]},
            "inners": [{"name": "a", "added_later": True}],
            "optional_inner": {"name": "b", "x": None},
        }
    )
    msg = decode(Everything, data)
    assert msg == Everything(id="u", inners=[Inner("a")], optional_inner=Inner("b"))
    assert not hasattr(msg, "future")


def test_defaults_are_filled_and_factories_are_fresh() -> None:
    a = decode(Everything, b'{"id":"d"}')
    b = decode(Everything, b'{"id":"d"}')
    assert a == Everything(id="d")
    assert a.inners == [] and a.inners is not b.inners
    assert a.table == {} and a.table is not b.table
    assert a.optional is None and a.optional_inner is None
    # a required ``T | None`` field that is absent is None (it was None when sent)
    Req = make_dataclass("Req", [("must", "int | None")])
    assert decode(Req, b"{}") == Req(None)


def test_null_only_where_the_type_allows_it() -> None:
    assert decode(Everything, b'{"id":"n","optional":null,"optional_inner":null}') == Everything(
        "n"
    )
    assert decode(Everything, b'{"id":"n","maybe":[null,2]}').maybe == [None, 2]
    for body, path in (
        ('{"id":null}', "id"),
        ('{"id":"n","count":null}', "count"),
        ('{"id":"n","inners":null}', "inners"),
        ('{"id":"n","matrix":[[1,null]]}', "matrix[0][1]"),
    ):
        with pytest.raises(DecodeError) as err:
            decode(Everything, body)
        assert err.value.path == path
        assert "null" in str(err.value)


@pytest.mark.parametrize(
    ("body", "path", "found"),
    [
        ('{"id":1}', "id", "an integer"),  # int is not str
        ('{"id":"w","count":"1"}', "count", "a string"),  # str is not int
        ('{"id":"w","count":true}', "count", "a boolean"),  # bool is not int
        ('{"id":"w","count":1.0}', "count", "a number"),  # float is not int
        ('{"id":"w","flag":1}', "flag", "an integer"),  # int is not bool
        ('{"id":"w","ratio":"1.5"}', "ratio", "a string"),
        ('{"id":"w","ratio":false}', "ratio", "a boolean"),  # bool is not float
        ('{"id":"w","inners":{}}', "inners", "an object"),
        ('{"id":"w","inners":["x"]}', "inners[0]", "a string"),
        ('{"id":"w","table":[]}', "table", "an array"),
        ('{"id":"w","table":{"a":[1,"2"]}}', "table['a'][1]", "a string"),
        ('{"id":"w","by_name":{"k":{"name":3}}}', "by_name['k'].name", "an integer"),
        ('{"id":"w","optional_inner":[]}', "optional_inner", "an array"),
    ],
)
def test_wrong_json_types_are_rejected_naming_the_field(body: str, path: str, found: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(Everything, body)
    assert err.value.path == path
    assert str(err.value).startswith(f"{path}: expected ")
    assert str(err.value).endswith(f"got {found}")
    with pytest.raises(DecodeError):
        reference_decode(Everything, body)


def test_float_field_accepts_an_integer_as_float() -> None:
    msg = decode(Everything, b'{"id":"f","ratio":3,"table":{"a":[1,2.5]}}')
    assert msg.ratio == 3.0 and type(msg.ratio) is float
    assert msg.table == {"a": [1.0, 2.5]}
    assert [type(v) for v in msg.table["a"]] == [float, float]


def test_error_path_in_a_list_of_dataclasses() -> None:
    values = [{"type": "t", "key": f"k{i}", "value": "v"} for i in range(6)]
    values[3]["key"] = 7  # type: ignore[assignment]
    with pytest.raises(DecodeError) as err:
        decode(ConfigRequest, orjson.dumps({"operation": "put", "values": values}))
    assert err.value.path == "values[3].key"
    assert str(err.value) == "values[3].key: expected a string, got an integer"
    del values[3]["key"]
    with pytest.raises(DecodeError) as err:
        decode(ConfigRequest, orjson.dumps({"operation": "put", "values": values}))
    assert err.value.path == "values[3].key"
    assert "missing required field" in str(err.value)
    with pytest.raises(DecodeError) as err:
        decode(ConfigRequest, b'{"values":[]}')
    assert err.value.path == "operation"


def test_bytes_that_are_not_json() -> None:
    for bad in (b"", b"nope", b'{"id":', b"\xff\xfe", b'{"id":"x"} trailing'):
        with pytest.raises(DecodeError) as err:
            decode(Everything, bad)
        assert "not valid JSON" in str(err.value)
    for top in (b"[]", b'"x"', b"1", b"null"):
        with pytest.raises(DecodeError) as err:
            decode(Everything, top)
        assert err.value.path == ""
        assert "expected an object" in str(err.value)


def test_error_messages_never_quote_values() -> None:
    with pytest.raises(DecodeError) as err:
        decode(WithSecret, b'{"user":"u","password":["hunter2"]}')
    assert "hunter2" not in str(err.value) and err.value.path == "password"
    with pytest.raises(DecodeError) as err:
        decode(WithSecret, b'{"user":"u","password":"hunter2","attempts":"hunter2"}')
    assert "hunter2" not in str(err.value)
    with pytest.raises(DecodeError) as err:
        reference_decode(WithSecret, b'{"user":"u","password":"hunter2","attempts":"hunter2"}')
    assert "hunter2" not in str(err.value)
    with pytest.raises(EncodeError) as eerr:
        encode(WithSecret(user="u", password="hunter2", score=float("nan")))
    assert "hunter2" not in str(eerr.value) and eerr.value.path == "score"


def test_one_mebibyte_message() -> None:
    size = 1024 * 1024
    msg = Everything(id="big", inners=[Inner("z", ["é"])])
    msg.text = "x" * (size - len(encode(msg)))
    data = encode(msg)
    assert len(data) == size
    assert decode(Everything, data) == msg
    blob = Everything(id="blob", blob=bytes(range(256)) * 3000)
    assert decode(Everything, encode(blob)) == blob


def test_recursive_types_and_quoted_triples() -> None:
    inner = Triple(Term(IRI, iri="http://a"), Term(IRI, iri="http://b"), Term(LITERAL, value="c"))
    quoted = Term(TRIPLE, triple=inner)
    for _ in range(5):
        quoted = Term(TRIPLE, triple=Triple(quoted, Term(IRI, iri="http://says"), quoted))
    msg = Triple(quoted, Term(IRI, iri="http://p"))
    assert decode(Triple, encode(msg)) == msg
    assert reference_decode(Triple, encode(msg)) == msg
    assert b"null" not in encode(msg)


def test_deep_nesting() -> None:
    def nested(depth: int) -> Term:
        term = Term(IRI, iri="http://leaf")
        for _ in range(depth):
            term = Term(TRIPLE, triple=Triple(term, Term(IRI, iri="http://p")))
        return term

    deep = nested(120)  # 241 JSON levels; orjson writes at most 254
    assert decode(Term, encode(deep)) == deep
    for depth in (130, 3000):
        with pytest.raises(EncodeError, match="nested too deeply|Recursion limit"):
            encode(nested(depth))
    body = '{"type":"t","triple":{"s":' * 600 + '{"type":"i"}' + ',"p":{"type":"i"}}}' * 600
    with pytest.raises(DecodeError):
        decode(Term, body)


def test_frozen_slots_and_post_init_classes() -> None:
    assert decode(FrozenPoint, encode(FrozenPoint(3))) == FrozenPoint(3, 0)
    assert decode(SlotsPoint, encode(SlotsPoint(1, "a"))) == SlotsPoint(1, "a")
    assert encode(SlotsPoint(1)) == b'{"x":1}'
    assert decode(Validated, b'{"port":80}') == Validated(80)
    with pytest.raises(DecodeError) as err:
        decode(Validated, b'{"port":0}')
    assert "Validated refused the values" in str(err.value)


def test_classes_the_compiler_does_not_handle_fall_back() -> None:
    msg = Uncompiled(colour=Colour.BLUE, pair=(1, 2), either="s", inner=Inner("i"))
    tree = wire(msg)
    assert tree == {
        "colour": "blue",
        "pair": [1, 2],
        "either": "s",
        "mode": "a",
        "inner": {"name": "i", "tags": []},
    }
    assert decode(Uncompiled, encode(msg)) == msg
    assert decode(Uncompiled, b'{"colour":"red","pair":[3,4],"either":1,"mode":"b"}') == Uncompiled(
        Colour.RED, (3, 4), 1, "b"
    )
    with pytest.raises(DecodeError):
        decode(Uncompiled, b'{"colour":"green","pair":[1,2],"either":1}')
    with pytest.raises(DecodeError) as err:
        decode(Uncompiled, b'{"colour":"red","pair":[1,2],"either":1.5}')
    assert err.value.path == "either"
    with pytest.raises(DecodeError) as err:
        decode(Uncompiled, b'{"colour":"red","pair":[1,2],"either":1,"inner":{"tags":[]}}')
    assert err.value.path == "inner.name"


# -- encode errors ----------------------------------------------------------------


def test_encode_refuses_what_would_put_garbage_on_the_wire() -> None:
    cases: list[tuple[Any, str, str]] = [
        (ConfigRequest(operation=None), "operation", "required field"),  # type: ignore[arg-type]
        (Everything(id="x", ratio=float("nan")), "ratio", "NaN"),
        (Everything(id="x", table={"a": [1.0, float("inf")]}), "table['a'][1]", "NaN"),
        (Everything(id="x", inners=[Inner("a"), "b"]), "inners[1]", "expected Inner"),  # type: ignore[list-item]
        (Everything(id="x", inners="ab"), "inners", "expected list"),  # type: ignore[arg-type]
        (Everything(id="x", by_name={"k": Inner(None)}), "by_name['k'].name", "required"),  # type: ignore[arg-type]
        (Everything(id="x", blob="text"), "blob", "expected bytes"),  # type: ignore[arg-type]
        (Everything(id="x", count=2**64), "count", "64 bits"),
        (Everything(id="bad \ud800 text"), "id", "surrogate"),
        (Everything(id="x", by_name={1: Inner("k")}), "by_name", "keys must be str"),  # type: ignore[dict-item]
        (
            Everything(id="x", optional_inner=ConfigValue("t", "k", "v")),
            "optional_inner",
            "expected Inner",
        ),  # type: ignore[arg-type]
    ]
    for msg, path, words in cases:
        with pytest.raises(EncodeError) as err:
            encode(msg)
        assert err.value.path == path, (msg, str(err.value))
        assert words in str(err.value), str(err.value)
        assert isinstance(err.value, TypeError) and isinstance(err.value, SchemaError)


def test_encode_takes_only_dataclass_instances() -> None:
    for bad in ({"a": 1}, [1], "x", Inner, None):
        with pytest.raises(EncodeError, match="dataclass instance"):
            encode(bad)


def test_none_in_a_defaulted_field_is_left_out() -> None:
    msg = Everything(id="x", count=None, inners=None)  # type: ignore[arg-type]
    full = wire(Everything(id="x"))
    assert wire(msg) == {k: v for k, v in full.items() if k not in ("count", "inners")}
    assert decode(Everything, encode(msg)) == Everything(id="x")


def test_unusual_but_valid_values_are_encoded() -> None:
    class Name(str):
        pass

    msg = Inner(name=Name("n"), tags=("a", "b"))  # type: ignore[arg-type]
    assert wire(msg) == {"name": "n", "tags": ["a", "b"]}
    assert wire(Everything(id="x", blob=bytearray(b"ab")))["blob"] == "YWI="


# -- schemas and the cache --------------------------------------------------------


def test_check_schema() -> None:
    check_schema(Everything)
    for bad in (int, dict, "Everything", Everything(id="x")):
        with pytest.raises(SchemaError):
            check_schema(bad)  # type: ignore[arg-type]

    @dataclass
    class Dangling:
        other: Missing  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(SchemaError, match="Dangling"):
        check_schema(Dangling)
    with pytest.raises(SchemaError):
        decode(Dangling, b"{}")


def test_functions_are_generated_once_and_cached() -> None:
    check_schema(Everything)
    enc, dec = codec._ENCODERS[Everything], codec._DECODERS[Everything]
    encode(Everything(id="x"))
    decode(Everything, b'{"id":"x"}')
    assert codec._ENCODERS[Everything] is enc and codec._DECODERS[Everything] is dec
    src = codec.generated_source(Everything)
    plan = codec._plan(Everything)
    for prefix in ("E", "D", "d"):  # fast encoder, fast decoder, precise decoder
        assert f"def {prefix}{plan.ident}(" in src


def test_per_class_decoder() -> None:
    dec = decoder(Everything)
    assert decoder(Everything) is dec
    data = encode(Everything(id="p", inners=[Inner("a")]))
    assert dec(data) == decode(Everything, data) == Everything(id="p", inners=[Inner("a")])
    with pytest.raises(DecodeError) as err:
        dec(b'{"id":"p","inners":[{"name":1}]}')
    assert err.value.path == "inners[0].name"
    with pytest.raises(DecodeError, match="not valid JSON"):
        dec(b"{")
    with pytest.raises(SchemaError):
        decoder(int)
    assert decoder(Uncompiled)(encode(Uncompiled(Colour.RED, (1, 2), 3))) == Uncompiled(
        Colour.RED, (1, 2), 3
    )


def test_first_use_from_many_threads() -> None:
    Fresh = make_dataclass("Fresh", [("a", int), ("b", list[str], field(default_factory=list))])
    results: list[Any] = []

    def work() -> None:
        results.append(decode(Fresh, encode(Fresh(1, ["x"]))))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [Fresh(1, ["x"])] * 8


# -- the compiled path against the reference -------------------------------------------

_names = itertools.count()
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_SCALARS: list[Any] = [str, int, float, bool, bytes]


@st.composite
def field_types(draw: st.DrawFn, depth: int) -> Any:
    pick = draw(st.integers(0, 9 if depth < 3 else 4))
    if pick <= 4:
        return _SCALARS[pick]
    inner = draw(field_types(depth + 1))
    if pick in (5, 6):
        return list[inner]  # type: ignore[valid-type]
    if pick == 7:
        return dict[str, inner]  # type: ignore[valid-type]
    if pick == 8:
        return inner if _is_optional(inner) else inner | None
    return draw(schemas(depth + 1))


def _is_optional(t: Any) -> bool:
    return type(None) in getattr(t, "__args__", ())


@st.composite
def schemas(draw: st.DrawFn, depth: int = 0) -> type[Any]:
    """A random dataclass: required fields, ``T | None = None`` fields, defaults."""
    required, optional = [], []
    for i in range(draw(st.integers(0 if depth else 1, 6))):
        t = draw(field_types(depth))
        how = draw(st.sampled_from(["required", "optional", "default"]))
        name = f"f{i}"
        if how == "required":
            required.append((name, t))
        elif how == "optional" or dataclasses.is_dataclass(t):
            optional.append((name, t if _is_optional(t) else t | None, field(default=None)))
        else:
            optional.append((name, t, _default_for(draw, t)))
    options = draw(st.sampled_from([{}, {"frozen": True}, {"slots": True}]))
    return make_dataclass(f"Random{next(_names)}", required + optional, **options)


def _default_for(draw: st.DrawFn, t: Any) -> Any:
    origin = getattr(t, "__origin__", None)
    if origin in (list, dict):
        return field(default_factory=origin)
    if _is_optional(t):
        return field(default=None)
    return field(default=draw(values_for(t)))


def values_for(t: Any) -> st.SearchStrategy[Any]:
    if t is str:
        return _text
    if t is int:
        return st.integers(-(2**63), 2**63 - 1)
    if t is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if t is bool:
        return st.booleans()
    if t is bytes:
        return st.binary(max_size=24)
    if _is_optional(t):
        (inner,) = [a for a in t.__args__ if a is not type(None)]
        return st.none() | values_for(inner)
    origin = getattr(t, "__origin__", None)
    if origin is list:
        return st.lists(values_for(t.__args__[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(_text, values_for(t.__args__[1]), max_size=3)
    assert dataclasses.is_dataclass(t)
    return st.builds(t, **{f.name: values_for(f.type) for f in dataclasses.fields(t)})


@st.composite
def instances(draw: st.DrawFn) -> Any:
    return draw(values_for(draw(schemas())))


_JSON_VALUES = st.sampled_from(
    [None, 0, 1, -5, 1.5, True, False, "", "x", "YQ==", [], [1], {}, {"f0": 1}]
)


def mutate(draw: st.DrawFn, tree: Any, top: bool = True) -> Any:
    """Replace, drop or add one value somewhere in a parsed JSON tree (rarely the root)."""
    if isinstance(tree, dict) and tree and (top or draw(st.booleans())):
        key = draw(st.sampled_from(sorted(tree)))
        what = draw(st.sampled_from(["replace", "drop", "descend", "add"]))
        if what == "replace":
            return {**tree, key: draw(_JSON_VALUES)}
        if what == "drop":
            return {k: v for k, v in tree.items() if k != key}
        if what == "add":
            return {**tree, "unknown": draw(_JSON_VALUES)}
        return {**tree, key: mutate(draw, tree[key], False)}
    if isinstance(tree, list) and tree:
        i = draw(st.integers(0, len(tree) - 1))
        new = list(tree)
        new[i] = mutate(draw, tree[i], False) if draw(st.booleans()) else draw(_JSON_VALUES)
        return new
    return draw(_JSON_VALUES)


_settings = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_settings
@given(instances())
def test_random_schemas_round_trip_and_agree_with_dacite(msg: Any) -> None:
    cls = type(msg)
    data = encode(msg)
    fast = decode(cls, data)
    assert fast == msg
    assert reference_decode(cls, data) == fast
    # the strict walker (the encoder's arbiter) writes the same JSON
    assert orjson.loads(codec._encode_slow(msg)) == orjson.loads(data)
    # the precise decoder (the fast path's arbiter) builds the same object
    assert codec._decode_precise(cls, orjson.loads(data)) == fast


def _none_fields_absent(obj: Any, tree: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            assert f.name not in tree
        else:
            assert f.name in tree
            if dataclasses.is_dataclass(value):
                _none_fields_absent(value, tree[f.name])


@_settings
@given(instances())
def test_random_schemas_never_write_a_none_field(msg: Any) -> None:
    _none_fields_absent(msg, orjson.loads(encode(msg)))


@_settings
@given(instances(), st.data())
def test_fast_decoder_and_dacite_agree_on_damaged_messages(msg: Any, data: st.DataObject) -> None:
    cls = type(msg)
    damaged = orjson.dumps(mutate(data.draw, orjson.loads(encode(msg))))
    try:
        ours = decode(cls, damaged)
    except DecodeError:
        ours = DecodeError
    try:
        theirs = reference_decode(cls, damaged)
    except DecodeError:
        theirs = DecodeError
    assert ours == theirs, damaged
