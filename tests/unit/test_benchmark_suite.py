"""The benchmark suite's machinery, on the in-process backend (no figures are judged).

Speed is measured by ``benchmarks/suite.py``, never by a test; this only makes
sure that a trial runs and reports what the suite's tables read, so the suite
does not rot between runs.
"""

from __future__ import annotations

import argparse

from benchmarks.suite import (
    faststream_trials,
    latency_stats,
    summarize_latency,
    summarize_throughput,
    trials,
)
from benchmarks.trial import run


async def test_a_throughput_trial_reports_rates_and_duplicates() -> None:
    out = await run({"broker": "memory", "config": {"pubsub_backend": "memory"},
                     "contender": "sdk", "workload": "throughput", "n": 300, "consumers": [1, 4]})
    for key in ("c1", "c4"):
        assert out[key]["unique"] == 300 and out[key]["duplicates"] == 0
        assert out[key]["produce_per_s"] > 0 and out[key]["consume_per_s"] > 0
        assert out[key]["produce_cpu_us"] > 0 and out[key]["consume_cpu_us"] > 0
    summary = summarize_throughput({"sdk": [out]})
    assert summary["sdk"]["c4"]["consume_per_s"]["median"] == out["c4"]["consume_per_s"]
    assert summary["sdk"]["c1"]["produce_cpu_us"]["median"] == out["c1"]["produce_cpu_us"]


async def test_a_request_response_trial_reports_latencies() -> None:
    out = await run({"broker": "memory", "config": {"pubsub_backend": "memory"},
                     "contender": "sdk", "workload": "rr", "n": 50, "concurrent": 20})
    assert len(out["sequential"]) == 50 and len(out["concurrent"]) == 20
    stats = latency_stats(out["sequential"])
    assert 0 < stats["p50"] <= stats["p99"] <= stats["max"]
    assert summarize_latency({"sdk": [out]}, ("sequential",))["sdk"]["sequential"]["p50"]["median"] > 0


def test_kafka_and_pulsar_get_more_trials_except_when_quick() -> None:
    full = argparse.Namespace(trials=3, quick=False)
    assert trials("kafka", full, "throughput") == 7 and trials("kafka", full, "rr") == 7
    assert trials("pulsar", full, "throughput") == 5 and trials("pulsar", full, "rr") == 3
    assert trials("rabbitmq", full, "throughput") == 3 and trials("mqtt", full, "rr") == 3
    assert trials("kafka", argparse.Namespace(trials=7, quick=False), "rr") == 7  # --trials 7 is more
    assert trials("pulsar", argparse.Namespace(trials=1, quick=True), "throughput") == 1
    assert faststream_trials(full) == 3 and faststream_trials(argparse.Namespace(trials=9)) == 9
