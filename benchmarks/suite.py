"""The benchmark suite: the SDK against raw clients and FastStream, on every broker.

    python -m benchmarks.suite [--quick] [--brokers pulsar,kafka,rabbitmq,mqtt] [--plot]
    tg-pubsub bench [same flags]

Per broker (started as the tests start them), contenders run the same
workloads on the same broker in the same run, interleaved A/B/C, A/B/C ...,
each trial in a fresh process (``benchmarks.trial``):

1. throughput: N messages of 1 KiB published, then consumed, with 1 consumer
   and with 4 consumers sharing one subscription; msg/s both ways;
   duplicates counted apart from unique messages;
2. request/response: 2,000 sequential round trips, and 200 concurrent ones
   (200 in flight at once, in 5 bursts: the figures of one burst of 200 on
   2 cores moved by half from run to run); p50 / p99 / p99.9 / max;
3. end-to-end latency at a fixed offered rate (half the raw client's
   measured maximum on that broker), from each message's scheduled send time;
4. the codec benchmark (``benchmarks.codec --quick``), folded into the report;
5. the control plane: 10 flows (Kafka: 5) of a 20-processor blueprint started
   and stopped; seconds per flow, config pushes per start and stop, config
   fetches per processor.

Each figure is the median of the trials (``--trials``, default 3; Pulsar's
throughput 5, Kafka's throughput and request/response 7, see ``TRIALS``;
FastStream never more than ``FASTSTREAM_TRIALS`` or ``--trials``) with its
min-max, and the ratios SDK / raw and
SDK / FastStream.  Throughput trials also give the process's CPU time per
message (every thread, set-up included), which the machine's other work moves
far less than a rate: its SDK / raw ratio is in the table too.  FastStream
publishes and drains at most ``FASTSTREAM_N`` messages a trial.  A progress bar runs
on stderr; the tables go to stdout; ``benchmarks/results/suite.json`` gets
everything (with each broker's seconds); ``--plot`` writes ``benchmarks/results/suite.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, median, percentile, print_table, write_results
from benchmarks.contenders import CONTENDERS

BROKERS = ("pulsar", "kafka", "rabbitmq", "mqtt")
#: flows the control-plane workload starts and stops, per broker.  Kafka gets 5:
#: every flow adds 20 group members that each poll tansu every
#: ``fetch_max_wait_ms`` (5 ms), so 10 flows took 190 s of a 900 s budget and
#: the later flows measured mostly a saturated CPU.
CONTROL_PLANE_FLOWS = {"kafka": 5}
#: throughput ("throughput") and request/response ("rr") trials per contender
#: where the default 3 are too few.  Kafka's 1p/4c drain lasts a third of a
#: second and its concurrent bursts tens of milliseconds, so the host's swings
#: set single trials: two suite runs of one commit gave SDK/raw 1p/4c consume
#: 0.82 and 0.96, concurrent p50 1.22 and 0.94.  Two more of each cost about
#: 2.5 minutes.  Kafka's request/response gets 7: each hop waits on its
#: consumer's poll phase, which holds for a whole trial, so a trial's p50 is
#: one draw of that phase (4 alternating trials of each: raw 5.2-6.5 ms
#: sequential, SDK 5.2-7.1; medians 6.39 and 6.68), and 5 trials gave SDK/raw
#: 1.21 in one suite run and 1.03 in others.  A trial takes about 17 s.
#: Kafka's throughput gets 7 as well: the same 1p/4c drain of 50,000 messages
#: (4 members, one partition each, no rebalance during it) cost the SDK from
#: 7.1 to 11.8 us of CPU a message in ten runs in a row, so one trial is set
#: by what the host does during its third of a second; 5 trials gave SDK/raw
#: 0.87 and 0.86 in two suite runs, against 0.96 from 8 drains alternated in
#: one process and 0.91 from 5 alternated trials.  A raw or SDK trial takes
#: about 9 s.
#: Pulsar's 1p/1c consume swung too: SDK/raw 0.81, 0.84, 0.86 and 0.94 in four
#: suite runs of close to one code, while in one process that alternated the
#: two drains four times (100,000 messages each) the SDK drained at 0.92 of
#: raw, CPU 1.09 per message.  A Pulsar throughput trial takes 5-6 s, so two
#: more of each contender cost about 25 s.
TRIALS: dict[str, dict[str, int]] = {"kafka": {"throughput": 7, "rr": 7},
                                     "pulsar": {"throughput": 5}}
#: FastStream's throughput trials at most: SDK/FastStream was 1.55-80 in
#: three suite runs, clear of its thresholds (1 for produce, 1.5 for consume;
#: its consume ratios were 5 and up), so trials beyond the default 3 only cost
#: time (about 10 s each on Kafka, where the group joins dominate).
FASTSTREAM_TRIALS = 3
#: FastStream's message count, where it is smaller than the broker's: it drains
#: Kafka at 1-2k msg/s (RabbitMQ and MQTT about 2k), so 20,000 messages took
#: 40 s a trial, a sixth of the suite's time.  5,000 still last seconds.
FASTSTREAM_N = 5_000
#: ``get_pubsub`` keys the throughput, request/response and latency trials add
#: to a broker's own (every contender reads them).  Kafka's members join with
#: a 3 s session timeout (the backend's default is 6 s): tansu holds a
#: JoinGroup for half the session timeout, every trial joins two to four
#: groups, and no clock runs during a join, so 3 s more a trial measured
#: nothing.  500 ms heartbeats still leave six to a session.
TRIAL_CONFIG: dict[str, dict[str, Any]] = {"kafka": {"kafka_session_timeout_ms": 3_000}}
ROOT = Path(__file__).resolve().parent.parent


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.began = time.monotonic()

    def step(self, what: str) -> None:
        self.done += 1
        self.show(what)

    def show(self, what: str) -> None:
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.began
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {what[:60]:<60}")
        sys.stderr.flush()

    def end(self) -> None:
        sys.stderr.write("\n")


def sizes(broker: str, quick: bool) -> dict[str, Any]:
    """Message counts per broker: enough to last seconds, not minutes.

    A drain must last long enough that a scheduling hiccup does not set the
    figure.  Pulsar gets 200,000: it drains at 150-200k msg/s, and over three
    trials of 50,000 the SDK's 1p/1c consume ranged 113-187k msg/s against
    169-181k at 200,000 (raw: 138-207k against 182-196k).  Kafka gets 50,000:
    at 20,000 the SDK's 1p/4c ranged 98-170k msg/s.
    """
    n = {"pulsar": 200_000, "kafka": 50_000, "rabbitmq": 10_000, "mqtt": 10_000}.get(broker, 10_000)
    return {
        "n": n // 4 if quick else n,
        "rr": 200 if quick else 2_000,
        "concurrent": 50 if quick else 200,
        "bursts": 2 if quick else 5,
        "seconds": 2.0 if quick else 3.0,
    }


def trial(spec: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
    """Run one trial in a fresh process; its JSON result (or the error)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.trial", json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-1500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def stats(values: list[float]) -> dict[str, float]:
    return {"median": median(values), "min": min(values), "max": max(values)} if values else {}


def latency_stats(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "p99.9": percentile(ms, 99.9),
            "max": max(ms)} if ms else {}


def start_broker(name: str) -> Any:
    sys.path.insert(0, str(ROOT))
    from tests.brokers import BrokerUnavailable, broker_class

    broker = broker_class(name)()
    try:
        broker.start()
    except BrokerUnavailable as exc:
        print(f"{name}: unavailable, skipped ({exc})", file=sys.stderr)
        return None
    return broker


def bench_broker(name: str, args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    broker = start_broker(name)
    if broker is None:
        return {"skipped": "broker unavailable"}
    config = {"pubsub_backend": name, **broker.backend_config(), **TRIAL_CONFIG.get(name, {})}
    contenders = [c for c in CONTENDERS[name] if c in args.contenders]
    size = sizes(name, args.quick)
    report: dict[str, Any] = {"sizes": {**size, "faststream_n": min(size["n"], FASTSTREAM_N)},
                              "contenders": contenders}
    try:
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        for t in range(trials(name, args, "throughput")):
            for c in contenders:
                if c == "faststream" and t >= faststream_trials(args):
                    continue
                progress.show(f"{name} {c} throughput (trial {t + 1})")
                n = min(size["n"], FASTSTREAM_N) if c == "faststream" else size["n"]
                runs[c].append(trial({"broker": name, "config": config, "contender": c,
                                      "workload": "throughput", "n": n, "consumers": [1, 4]}))
                progress.step(f"{name} {c} throughput")
        report["throughput"] = summarize_throughput(runs)
        sustained = _sustained_max(report["throughput"])
        rr: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders if c != "faststream"}
        for t in range(trials(name, args, "rr")):
            for c in rr:
                progress.show(f"{name} {c} request/response (trial {t + 1})")
                rr[c].append(trial({"broker": name, "config": config, "contender": c, "workload": "rr",
                                    "n": size["rr"], "concurrent": size["concurrent"],
                                    "bursts": size["bursts"]}))
                progress.step(f"{name} {c} request/response")
        report["rr"] = summarize_latency(rr, ("sequential", "concurrent"))
        rate = 0.5 * sustained if sustained else 1000.0
        paced: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders if c != "faststream"}
        for t in range(args.trials):
            for c in paced:
                progress.show(f"{name} {c} latency at {rate:,.0f}/s (trial {t + 1})")
                paced[c].append(trial({"broker": name, "config": config, "contender": c,
                                       "workload": "paced", "rate": rate, "seconds": size["seconds"]}))
                progress.step(f"{name} {c} paced")
        report["paced"] = {"rate": rate, **summarize_latency(paced, ("latencies",))}
    finally:
        broker.stop()
    return report


def trials(broker: str, args: argparse.Namespace, workload: str) -> int:
    """Trials of ``workload`` ("throughput" or "rr"): ``--trials``, or ``TRIALS`` where more (not ``--quick``)."""
    return args.trials if args.quick else max(args.trials, TRIALS.get(broker, {}).get(workload, 0))


def faststream_trials(args: argparse.Namespace) -> int:
    """FastStream's throughput trials at most: ``FASTSTREAM_TRIALS``, or ``--trials`` where more."""
    return max(args.trials, FASTSTREAM_TRIALS)


def _sustained_max(tput: dict[str, Any]) -> float:
    """The highest rate both raw client and SDK sustained, one producer, one consumer.

    The paced workload offers half of it: half of the faster contender's
    maximum would saturate the slower one, and then its latency measures a
    growing backlog, not the path a message takes.
    """
    rates = []
    for c in ("raw", "sdk"):
        c1 = tput.get(c, {}).get("c1", {})
        rates += [c1.get(k, {}).get("median", 0.0) for k in ("produce_per_s", "consume_per_s")]
    return min(rates) if rates and all(rates) else 0.0


def summarize_throughput(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, results in runs.items():
        errors = [r["error"] for r in results if "error" in r]
        good = [r for r in results if "error" not in r]
        entry: dict[str, Any] = {"errors": errors} if errors else {}
        for key in ("c1", "c4"):
            rows = [r[key] for r in good if key in r]
            entry[key] = {
                "produce_per_s": stats([r["produce_per_s"] for r in rows]),
                "consume_per_s": stats([r["consume_per_s"] for r in rows]),
                "produce_cpu_us": stats([r["produce_cpu_us"] for r in rows if "produce_cpu_us" in r]),
                "consume_cpu_us": stats([r["consume_cpu_us"] for r in rows if "consume_cpu_us" in r]),
                "duplicates": [r["duplicates"] for r in rows],
                "unique": [r["unique"] for r in rows],
            }
        out[c] = entry
    return out


def summarize_latency(runs: dict[str, list[dict[str, Any]]], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, results in runs.items():
        good = [r for r in results if "error" not in r and "skipped" not in r]
        entry: dict[str, Any] = {}
        if len(good) < len(results):
            entry["errors"] = [r.get("error") or r.get("skipped") for r in results if r not in good]
        for key in keys:
            per_trial = [latency_stats(r[key]) for r in good if r.get(key)]
            entry[key] = {q: stats([p[q] for p in per_trial]) for q in ("p50", "p99", "p99.9", "max")} \
                if per_trial else {}
        out[c] = entry
    return out


def control_plane(args: argparse.Namespace, brokers: list[str], progress: Progress) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in brokers:
        progress.show(f"{name} control plane")
        broker = start_broker(name)
        if broker is None:
            continue
        try:
            config = {"pubsub_backend": name, **broker.backend_config()}
            flows = 3 if args.quick else CONTROL_PLANE_FLOWS.get(name, 10)
            res = subprocess.run(
                [sys.executable, "-m", "benchmarks.control_plane", json.dumps(
                    {"config": config, "flows": flows, "broker": name})],
                capture_output=True, text=True, timeout=900, cwd=ROOT,
            )
            lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
            out[name] = json.loads(lines[-1]) if lines else {"error": res.stderr[-1500:]}
        finally:
            broker.stop()
        progress.step(f"{name} control plane")
    return out


def codec_figures(progress: Progress) -> dict[str, Any]:
    progress.show("codec")
    subprocess.run([sys.executable, "-m", "benchmarks.codec", "--quick"], capture_output=True,
                   text=True, timeout=600, cwd=ROOT)
    progress.step("codec")
    try:
        data: dict[str, Any] = json.loads((RESULTS / "codec.json").read_text())
        return data
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def tables(report: dict[str, Any]) -> None:
    rows: list[list[Any]] = []
    for b, r in report["brokers"].items():
        tp = r.get("throughput")
        if not tp:
            continue
        for key, label in (("c1", "1p/1c"), ("c4", "1p/4c")):
            for way in ("produce_per_s", "consume_per_s"):
                med = {c: tp.get(c, {}).get(key, {}).get(way, {}).get("median") for c in tp}
                cpu_way = way.replace("_per_s", "_cpu_us")
                cpu = {c: tp.get(c, {}).get(key, {}).get(cpu_way, {}).get("median") for c in tp}
                rng = tp.get("sdk", {}).get(key, {}).get(way, {})
                dups = tp.get("sdk", {}).get(key, {}).get("duplicates", [])
                rows.append([
                    b, label, way.split("_")[0],
                    med.get("raw") or "-", med.get("sdk") or "-",
                    f"{rng.get('min', 0):,.0f}-{rng.get('max', 0):,.0f}" if rng else "-",
                    med.get("faststream") or "-",
                    _fmt(ratio(med.get("sdk"), med.get("raw"))),
                    _fmt(ratio(med.get("sdk"), med.get("faststream"))),
                    _fmt(ratio(cpu.get("sdk"), cpu.get("raw"))),
                    max(dups) if dups else "-",
                ])
    if rows:
        print_table("Throughput, msg/s (median of trials; SDK min-max); CPU: process CPU "
                    "per message, SDK / raw",
                    ["broker", "shape", "way", "raw", "SDK", "SDK range", "FastStream", "SDK/raw",
                     "SDK/FS", "CPU SDK/raw", "SDK dups"], rows)
        if "kafka" in report["brokers"]:
            print("\nKafka 1p/4c consume: raw aiokafka and the SDK handle only once all four members have\n"
                  "started (aiokafka's start returns when its member holds its partitions), so the\n"
                  "clock leaves out the group's forming: tansu answers a member whose SyncGroup\n"
                  "came before the leader's a second later. Over a drain (4 alternating trials, first\n"
                  "message to last) raw's process took 6.1-6.4 us of CPU a message, at 0.81-0.86 of its\n"
                  "wall time, the SDK's 6.6-7.2 us at 0.94-0.99; tansu, on the same 2 cores, took 5.0-5.8\n"
                  "us a message serving raw, which commits after every fetch, and 2.4-3.2 us serving the\n"
                  "SDK. So raw waits on the broker and the SDK on its own CPU, and which drains faster\n"
                  "moves with what else the host does (those 4 pairs: SDK/raw 1.03). The SDK's extra CPU\n"
                  "is the Python calls a message makes through Consumer that raw's inline loop does not:\n"
                  "the receive and ack calls, the handler's coroutine, the latency clock, the message\n"
                  "(1.0 us against a stubbed client, where raw's loop costs 1.6-1.8 us).")
    rows = []
    for b, r in report["brokers"].items():
        for label, section, key in (("rr sequential", "rr", "sequential"),
                                    ("rr concurrent", "rr", "concurrent"),
                                    ("paced", "paced", "latencies")):
            sec = r.get(section) or {}
            for c in ("raw", "sdk"):
                q = sec.get(c, {}).get(key, {})
                if q:
                    rows.append([b, label, c] + [q[p]["median"] for p in ("p50", "p99", "p99.9", "max")])
            raw50 = sec.get("raw", {}).get(key, {}).get("p50", {}).get("median")
            sdk50 = sec.get("sdk", {}).get(key, {}).get("p50", {}).get("median")
            if raw50 and sdk50:
                rows.append([b, label, "SDK/raw p50", _fmt(sdk50 / raw50), "", "", ""])
    if rows:
        print_table("Latency, ms (median of trials)",
                    ["broker", "workload", "who", "p50", "p99", "p99.9", "max"], rows)
        if "kafka" in report["brokers"]:
            print("\nKafka rr concurrent: caller and responder share one process, and a burst keeps it\n"
                  "busy; CPU per round trip is about the same (alternating runs: raw 73-87 us, SDK\n"
                  "79-91 us). tansu does not answer a waiting fetch when a produce lands; it looks again\n"
                  "later (aiokafka alone, an idle topic: a record reached its consumer 0.1-3.5 ms after\n"
                  "its produce completed at fetch_max_wait_ms 5, 13-27 ms at 100), so each hop waits on\n"
                  "its consumer's poll phase. The SDK sends a burst in one produce request (128 KiB batches),\n"
                  "raw in chunks of about 60 (16 KiB): in one A/B the SDK's responder saw a burst 1.1-1.8\n"
                  "ms after its produce in half the bursts and 3.4-5.1 ms in the rest (raw 1.4-2.2 ms).\n"
                  "With 16 KiB batches the SDK paid aiokafka's full-batch waits (104-116 us per round\n"
                  "trip) and was slower. Alternating A/B runs put the SDK at 1.13-1.26 of raw; in 4 later\n"
                  "alternating trials each the medians were 6.39 (raw) and 6.68 ms sequential, 20.2 and\n"
                  "20.6 ms concurrent, each trial's p50 one draw of the poll phase (5.2-7.1 ms).")
    codec = (report.get("codec") or {}).get("messages") or {}
    if codec:
        rows = []
        for message, ways in codec.items():
            for way in ("encode", "decode"):
                us = ways.get(way, {}).get("us_per_call", {})
                rows.append([message, way, us.get("ours"), us.get("msgspec"), us.get("pydantic"),
                             us.get("baseline"), _fmt(ratio(us.get("ours"), us.get("msgspec")))])
        print_table("Codec, microseconds per call (median)",
                    ["message", "way", "ours", "msgspec", "pydantic", "asdict+dacite", "ours/msgspec"],
                    rows)
    cp = report.get("control_plane") or {}
    if cp:
        print_table("Control plane: 20-processor blueprint",
                    ["broker", "flows", "start s/flow", "stop s/flow", "pushes/start", "pushes/stop",
                     "fetches/processor/start"],
                    [[b, v.get("flows"), v.get("start_s_per_flow"), v.get("stop_s_per_flow"),
                      v.get("pushes_per_start"), v.get("pushes_per_stop"),
                      v.get("fetches_per_processor_per_start")] for b, v in cp.items() if "error" not in v])


def _fmt(v: float | None) -> str:
    return f"{v:.2f}" if v else "-"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    brokers = [b for b, r in report["brokers"].items() if r.get("throughput")]
    contenders = ["raw", "sdk", "faststream"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.25
    for i, c in enumerate(contenders):
        vals = [report["brokers"][b]["throughput"].get(c, {}).get("c1", {}).get("consume_per_s", {})
                .get("median", 0) for b in brokers]
        axes[0].bar([x + i * width for x in range(len(brokers))], vals, width, label=c)
    axes[0].set_xticks([x + width for x in range(len(brokers))], brokers)
    axes[0].set_ylabel("consume msg/s (1 KiB, 1 consumer)")
    axes[0].set_yscale("log")
    axes[0].legend()
    for i, c in enumerate(("raw", "sdk")):
        vals = [report["brokers"][b].get("rr", {}).get(c, {}).get("sequential", {}).get("p50", {})
                .get("median", 0) for b in brokers]
        axes[1].bar([x + i * width for x in range(len(brokers))], vals, width, label=c)
    axes[1].set_xticks([x + width / 2 for x in range(len(brokers))], brokers)
    axes[1].set_ylabel("request/response p50, ms")
    axes[1].legend()
    fig.suptitle("trustgraph-pubsub: SDK vs raw clients vs FastStream")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, one trial")
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--contenders", default="raw,sdk,faststream")
    parser.add_argument("--trials", type=int, default=None, help="trials per contender (default 3; quick 1)")
    parser.add_argument("--skip", default="", help="comma list of: codec, control-plane")
    parser.add_argument("--plot", action="store_true", help="write benchmarks/results/suite.png")
    args = parser.parse_args(argv)
    args.trials = args.trials or (1 if args.quick else 3)
    args.contenders = set(args.contenders.split(","))
    brokers = [b for b in args.brokers.split(",") if b]
    skip = set(args.skip.split(","))
    per_broker = sum(sum(min(trials(b, args, "throughput"), faststream_trials(args))
                         if c == "faststream" else trials(b, args, "throughput")
                         for c in CONTENDERS[b] if c in args.contenders)
                     + len([c for c in CONTENDERS[b] if c in args.contenders and c != "faststream"])
                     * (trials(b, args, "rr") + args.trials)
                     for b in brokers)
    progress = Progress(per_broker + ("codec" not in skip) + ("control-plane" not in skip) * len(brokers))
    began = time.monotonic()
    report: dict[str, Any] = {"quick": args.quick, "trials": args.trials, "brokers": {}}
    os.environ.setdefault("PYTHONHASHSEED", "0")
    for b in brokers:
        t0 = time.monotonic()
        report["brokers"][b] = bench_broker(b, args, progress)
        report["brokers"][b]["seconds"] = time.monotonic() - t0
    if "codec" not in skip:
        report["codec"] = codec_figures(progress)
    if "control-plane" not in skip:
        report["control_plane"] = control_plane(args, brokers, progress)
    progress.end()
    report["seconds"] = time.monotonic() - began
    tables(report)
    print(f"\nsuite took {report['seconds']:.0f}s")
    write_results("suite", report)
    if args.plot:
        plot(report, RESULTS / "suite.png")


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))
    main()
