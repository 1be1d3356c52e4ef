"""Codec benchmark: our compiled codec against the baseline and two peers.

``python -m benchmarks.codec [--quick]`` times encode and decode of three
reference messages with

* ``baseline``: ``dataclasses.asdict`` + None-stripping (and base64 for
  bytes) + stdlib ``json`` + ``dacite.from_dict`` with a base64 hook for
  bytes: what a straightforward implementation of the same wire contract
  does (it is the interim codec this one replaced, on stdlib json);
* ``pydantic``: pydantic v2 ``TypeAdapter`` over the same dataclasses
  (``dump_json(exclude_none=True)`` / ``validate_json``);
* ``msgspec``: msgspec encoding the dataclasses and decoding into them.
  Its encoder writes ``null`` for every None field (msgspec omits defaults
  only for its own ``Struct`` types), so its output is larger than ours;
* ``ours``: ``trustgraph_schema.encode`` and ``decoder(cls)`` (the per-class
  decoder, as msgspec and pydantic are measured with their per-class
  ``Decoder``/``TypeAdapter``; ``decode(cls, data)`` adds one dict lookup).

Every decoder reads the same bytes (ours, None fields absent); every
encoder gets its own, identical message object (see ``run`` for why).  Each
(message, operation, implementation) is timed in batches of about 12 ms;
the batches of all implementations are interleaved, round after round, and
the table shows the median time per call (the targets are judged on these
medians; the JSON also records, as a diagnostic, the median of the per-round
ratios, which cancels load that changes from one round to the next).
Timing follows ``timeit``: CPU
time of this thread (``time.thread_time``, so the other work on a shared
machine is not billed to whoever was running when it was preempted) with
the garbage collector paused during a batch; ``--gc`` leaves it running
(allocation-heavy decoders then also pay for the collections they cause).
Results go to ``benchmarks/results/codec.json``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gc
import json
import time
from collections.abc import Callable
from typing import Any

import dacite
import msgspec
import pydantic

from benchmarks.common import median, print_table, write_results
from trustgraph_schema import (
    IRI,
    LITERAL,
    ConfigRequest,
    ConfigResponse,
    ConfigValue,
    Metadata,
    Term,
    Triple,
    Triples,
    decode,
    decoder,
    encode,
)

IMPLS = ("baseline", "pydantic", "msgspec", "ours")


def small_request() -> ConfigRequest:
    """A config ``getvalues``: three fields set, the rest None."""
    return ConfigRequest(operation="getvalues", workspace="default", type="prompt")


def config_response() -> ConfigResponse:
    """20 values and a 5x5 ``config`` map."""
    return ConfigResponse(
        version=1042,
        values=[
            ConfigValue(type=f"type-{i % 4}", key=f"key-{i}", value=f"value of entry {i} " * 3)
            for i in range(20)
        ],
        config={
            f"type-{t}": {f"key-{k}": f"value {t}.{k} with some text" for k in range(5)}
            for t in range(5)
        },
    )


def triples_message() -> Triples:
    """500 triples of IRIs and literals, as an extractor emits them."""
    triples = []
    for i in range(500):
        obj = (
            Term(type=LITERAL, value=f"Entity number {i}", language="en")
            if i % 2
            else Term(type=IRI, iri=f"http://example.org/entity/{i + 1}")
        )
        triples.append(
            Triple(
                s=Term(type=IRI, iri=f"http://example.org/entity/{i}"),
                p=Term(type=IRI, iri="http://www.w3.org/2000/01/rdf-schema#label"),
                o=obj,
            )
        )
    return Triples(
        metadata=Metadata(id="doc-17", workspace="default", collection="papers"),
        triples=triples,
    )


#: name -> factory; every implementation encodes its own instance (see ``run``).
MESSAGES: dict[str, Callable[[], Any]] = {
    "ConfigRequest (3 fields)": small_request,
    "ConfigResponse (20 values, 5x5 map)": config_response,
    "Triples (500)": triples_message,
}


# -- the implementations ------------------------------------------------------


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


#: The baseline's dacite configuration: bytes arrive as base64 text.
_BASELINE_DACITE = dacite.Config(type_hooks={bytes: base64.b64decode})


def make_impls(cls: type[Any]) -> dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]:
    """``name -> (encode, decode)`` for one message class."""
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(cls)
    ms_encoder = msgspec.json.Encoder()
    ms_decoder = msgspec.json.Decoder(cls)
    dumps, loads = json.dumps, json.loads

    def baseline_encode(obj: Any) -> bytes:
        return dumps(_strip_none(dataclasses.asdict(obj)), separators=(",", ":")).encode()

    def baseline_decode(data: bytes) -> Any:
        return dacite.from_dict(cls, loads(data), config=_BASELINE_DACITE)

    def pydantic_encode(obj: Any) -> bytes:
        return adapter.dump_json(obj, exclude_none=True)

    return {
        "baseline": (baseline_encode, baseline_decode),
        "pydantic": (pydantic_encode, adapter.validate_json),
        "msgspec": (ms_encoder.encode, ms_decoder.decode),
        "ours": (encode, decoder(cls)),
    }


def check(name: str, msg: Any, impls: dict[str, Any]) -> None:
    """Every implementation must produce and read back the same message."""
    wire = encode(msg)
    expected = json.loads(wire)
    assert b"null" not in wire, f"{name}: our encoding contains null"
    assert decode(type(msg), wire) == msg, f"{name}: decode() differs from decoder()"
    for impl, (enc, dec) in impls.items():
        produced = _strip_none(json.loads(enc(msg)))
        assert produced == expected, f"{name}: {impl} encodes differently"
        assert dec(wire) == msg, f"{name}: {impl} decodes differently"


# -- timing -----------------------------------------------------------------


def calibrate(fn: Callable[[], Any], target: float) -> int:
    """Calls per batch so that a batch takes about ``target`` seconds."""
    n = 1
    while True:
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        elapsed = time.thread_time() - t0
        if elapsed >= target / 4 or n >= 1 << 20:
            return max(1, int(n * target / max(elapsed, 1e-9)))
        n *= 4


def batch(fn: Callable[[], Any], n: int, keep_gc: bool) -> float:
    """CPU seconds per call over ``n`` calls (the garbage collector paused, as timeit does)."""
    if not keep_gc:
        gc.disable()
    try:
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        return (time.thread_time() - t0) / n
    finally:
        gc.enable()


def run(quick: bool, keep_gc: bool = False) -> dict[str, Any]:
    repeats = 5 if quick else 45  # rounds: more of them steady the medians on a busy machine
    target = 0.004 if quick else 0.012
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    ok = True
    for name, factory in MESSAGES.items():
        msg = factory()
        impls = make_impls(type(msg))
        check(name, factory(), impls)
        wire = encode(msg)
        jobs: dict[tuple[str, str], Callable[[], Any]] = {}
        for impl, (enc, dec) in impls.items():
            # Each implementation encodes its own copy: an encoder that reads
            # an instance's __dict__ (orjson, msgspec, pydantic) makes CPython
            # 3.11 trade the instance's inline attribute values for a real
            # dict, which slows every later attribute read of that instance.
            own = factory()
            jobs[("encode", impl)] = lambda enc=enc, own=own: enc(own)
            jobs[("decode", impl)] = lambda dec=dec, wire=wire: dec(wire)
        sizes = {key: calibrate(fn, target) for key, fn in jobs.items()}
        samples: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
        gc.collect()
        for _ in range(repeats):
            for key, fn in jobs.items():  # interleaved: one batch of each per round
                samples[key].append(batch(fn, sizes[key], keep_gc))
        entry: dict[str, Any] = {
            "wire_bytes": len(wire),
            "msgspec_wire_bytes": len(msgspec.json.encode(msg)),
        }
        for op in ("encode", "decode"):
            us = {impl: median(samples[(op, impl)]) * 1e6 for impl in IMPLS}
            ours, peer, base = (samples[(op, i)] for i in ("ours", "msgspec", "baseline"))
            vs_msgspec = us["ours"] / us["msgspec"]
            speedup = us["baseline"] / us["ours"]
            passed = vs_msgspec <= 2.0 and speedup >= 20.0
            ok = ok and passed
            rows.append(
                [name, op, *(us[i] for i in IMPLS), vs_msgspec, speedup, "yes" if passed else "NO"]
            )
            entry[op] = {
                "us_per_call": us,
                "samples_us": {i: [s * 1e6 for s in samples[(op, i)]] for i in IMPLS},
                "ours_over_msgspec": vs_msgspec,
                "baseline_over_ours": speedup,
                "paired_ours_over_msgspec": median(
                    [o / m for o, m in zip(ours, peer, strict=True)]
                ),
                "paired_baseline_over_ours": median(
                    [b / o for b, o in zip(base, ours, strict=True)]
                ),
                "meets_target": passed,
            }
        results[name] = entry
    print_table(
        f"codec: microseconds per call, median of {repeats} interleaved batches"
        f" (CPU time, gc {'on' if keep_gc else 'paused'})",
        [
            "message",
            "op",
            "baseline",
            "pydantic",
            "msgspec",
            "ours",
            "ours/msgspec",
            "baseline/ours",
            "target",
        ],
        rows,
    )
    print(
        "\ntarget: ours <= 2x msgspec-on-dataclasses and >= 20x faster than the baseline"
        f" -> {'met' if ok else 'NOT met'} for every message"
    )
    print("note: msgspec writes null for None fields; its wire sizes:", end="")
    print(
        "; ".join(
            f" {n}: {r['msgspec_wire_bytes']} B vs ours {r['wire_bytes']} B"
            for n, r in results.items()
        )
    )
    return {
        "quick": quick,
        "repeats": repeats,
        "timer": "time.thread_time (CPU time of the benchmark thread)",
        "gc_during_batches": keep_gc,
        "all_targets_met": ok,
        "versions": {
            "msgspec": msgspec.__version__,
            "pydantic": pydantic.VERSION,
            "dacite": getattr(dacite, "__version__", "?"),
        },
        "messages": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run: fewer, shorter batches")
    parser.add_argument(
        "--gc", action="store_true", help="leave the garbage collector running while timing"
    )
    args = parser.parse_args()
    write_results("codec", run(args.quick, args.gc))


if __name__ == "__main__":
    main()
