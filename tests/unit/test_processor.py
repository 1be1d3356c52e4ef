"""AsyncProcessor: flags and environment, lifecycle, supervision, the metrics endpoint."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from trustgraph_pubsub import ConfigurationError
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub
from trustgraph_pubsub.processor import AsyncProcessor


class Recorder(AsyncProcessor):
    default_ident = "recorder"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.events: list[str] = []
        self.fail_start = params.get("fail_start", False)

    async def on_start(self) -> None:
        self.events.append("start")
        if self.fail_start:
            raise RuntimeError("cannot start")

    async def on_stop(self) -> None:
        self.events.append("stop")


def test_flags_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSOR_ID", "from-env")
    monkeypatch.setenv("CONCURRENCY", "7")
    monkeypatch.setenv("PUBSUB_BACKEND", "memory")
    params = Recorder.parse("recorder", "doc", [])
    assert params["id"] == "from-env" and int(params["concurrency"]) == 7
    assert Recorder.parse("recorder", "doc", ["--id", "flag", "--log-level", "debug"])["id"] == "flag"
    monkeypatch.delenv("PROCESSOR_ID")
    assert Recorder.parse("chunky", "doc", [])["id"] == "chunky"


def test_bad_options_are_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="--concurrency"):
        Recorder(concurrency=0)
    with pytest.raises(ConfigurationError, match="--metrics-port"):
        Recorder(metrics_port="http")
    for bad in ("soon", 0, -1):
        with pytest.raises(ConfigurationError, match="--drain-timeout"):
            Recorder(drain_timeout=bad)
    assert Recorder(drain_timeout="2.5").drain_timeout == 2.5


async def test_lifecycle_owns_the_backend_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_BACKEND", "memory")
    proc = Recorder()
    async with proc:
        assert proc.running and proc.backend.name == "memory"
        backend = proc.backend
    assert proc.events == ["start", "stop"]
    assert getattr(backend, "closed", None) or getattr(backend, "_closed", None)
    await proc.stop()  # idempotent
    assert proc.events == ["start", "stop"]


async def test_a_failed_start_is_undone_and_an_injected_backend_left_open() -> None:
    backend = MemoryBackend(hub=MemoryHub())
    proc = Recorder(backend=backend, fail_start=True)
    with pytest.raises(RuntimeError, match="cannot start"):
        await proc.start()
    assert proc.events == ["start", "stop"]
    await backend.create_queue("q1/tg/flow/x", "s")  # still open: the caller owns it
    await backend.close()


async def test_run_returns_after_request_stop() -> None:
    proc = Recorder(backend=MemoryBackend(hub=MemoryHub()))
    task = asyncio.create_task(proc.run())
    while not proc.running:  # noqa: ASYNC110 (nothing to wait on but the flag)
        await asyncio.sleep(0.01)
    proc.request_stop()
    await asyncio.wait_for(task, 5)
    assert proc.events == ["start", "stop"]


async def test_a_supervised_task_that_dies_is_restarted() -> None:
    proc = Recorder(backend=MemoryBackend(hub=MemoryHub()))
    runs = 0
    again = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"crash {runs}")
        again.set()
        await asyncio.Event().wait()

    async with proc:
        proc.supervise("flaky", flaky)
        await asyncio.wait_for(again.wait(), 10)
    assert runs == 3


async def test_stop_ends_a_task_that_swallowed_its_cancellation(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What Python 3.11's ``wait_for`` does when its inner awaitable finishes as the
    task is cancelled: the ``CancelledError`` is lost and the loop runs on.
    ``stop`` cancels it again instead of waiting for ever."""
    monkeypatch.setattr("trustgraph_pubsub.processor.RECANCEL_AFTER", 0.2)
    proc = Recorder(backend=MemoryBackend(hub=MemoryHub()))
    swallowed = 0
    running = asyncio.Event()

    async def deaf() -> None:
        nonlocal swallowed
        while True:
            running.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # lost, as wait_for loses it

    await proc.start()
    task = proc.supervise("deaf", deaf)
    await running.wait()
    async with asyncio.timeout(10):
        await proc.stop()
    assert swallowed == 1 and task.done()
    assert "ignored its cancellation" in caplog.text


def test_no_wait_for_in_the_package_or_the_services() -> None:
    """``asyncio.wait_for`` on 3.11 can lose a cancellation (see above): a stop
    then hangs.  ``asyncio.timeout`` does not; the SDK and services use only it."""
    root = Path(__file__).resolve().parents[2]
    found = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("trustgraph_pubsub", "trustgraph_schema", "bootstrap")
        for path in sorted((root / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert not found, f"asyncio.wait_for used (use asyncio.timeout): {found}"


async def test_metrics_are_served_on_the_metrics_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = Recorder(backend=MemoryBackend(hub=MemoryHub()), metrics_port=port)
    async with proc:
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        )
        assert b"python_info" in body or b"process_" in body or b"# HELP" in body
