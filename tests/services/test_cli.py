"""``tg-pubsub`` as a user runs it: ``dev`` per broker, and the small subcommands.

``dev --until-converged`` must exit 0 in under a minute on this machine,
print the state table and the default flow's answer, and leave no process
behind (the broker's port is closed afterwards and no process still names
the run's directory).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.brokers import Broker, port_open, require_brokers
from tests.services.battery import ControlPlane
from trustgraph_pubsub.config_client import ConfigClient

TG = str(Path(sys.executable).parent / "tg-pubsub")
DEV_LIMIT = 60.0


def _leftovers(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


@pytest.mark.parametrize("backend", ["memory", "pulsar", "kafka", "rabbitmq", "mqtt"])
def test_dev_until_converged(backend: str, tmp_path: Path) -> None:
    if backend in ("rabbitmq", "mqtt"):
        host = os.environ.get(f"{backend.upper()}_HOST", "127.0.0.1")
        port = int(os.environ.get(f"{backend.upper()}_PORT", "5672" if backend == "rabbitmq" else "1883"))
        if not port_open(host, port):
            why = f"no {backend} broker at {host}:{port} (scripts/ensure_brokers.sh starts it)"
            if require_brokers():
                pytest.fail(why)
            pytest.skip(why)
    workdir = tmp_path / "dev"
    began = time.monotonic()
    args = [TG, "dev", "--pubsub-backend", backend, "--until-converged", "--workdir", str(workdir)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=180)
    took = time.monotonic() - began
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "did not exit 0 on SIGTERM" not in text, text
    assert took < DEV_LIMIT, f"took {took:.1f}s\n{text}"
    assert "converged" in text and "default    default  chunks     running" in text, text
    assert "'TrustGraph services talk'" in text, text
    # Only this run's state: no flow another run left a request for (see run_dev).
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("---------")) + 1
    rows = lines[first:lines.index("", first)]
    assert rows and all(r.startswith("default ") for r in rows), text
    assert "stopped every service and the broker" in text, text
    m = re.search(r"at (?:pulsar://)?127\.0\.0\.1:(\d+)", text)
    if backend in ("pulsar", "kafka"):
        assert m and not port_open("127.0.0.1", int(m.group(1))), "the embedded broker still listens"
    assert not _leftovers(str(workdir)), _leftovers(str(workdir))


async def _run(*args: str, timeout: float = 60.0) -> tuple[int, str]:  # noqa: ASYNC109
    proc = await asyncio.create_subprocess_exec(
        TG, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


class TestSmallCommands:
    broker_name = "rabbitmq"

    async def test_send_listen_config_flows(self, broker: Broker, tmp_path: Path) -> None:
        flags = ["--pubsub-backend", "rabbitmq"]
        for key, value in broker.backend_config().items():
            flags += [f"--{key.replace('_', '-')}", str(value)]
        cp = ControlPlane(broker, tmp_path)
        try:
            await cp.start_config()
            await cp.start_flow()
            topic = f"q1/tg/cli/t-{os.getpid()}-{int(time.time())}"
            listen = asyncio.create_task(_run("listen", topic, "-n", "1", *flags))
            await asyncio.sleep(3)  # its subscription exists by now
            assert await _run("send", topic, '{"hello": "world"}', "-p", "who=me", *flags) == (
                0, f"sent to {topic}\n")
            code, out = await listen
            assert code == 0 and 'who=me {"hello": "world"}' in out, out
            assert (await _run("send", topic, "not json", *flags))[0] == 1

            code, out = await _run("config", "put", "w", "prompt", "p", '"hi"', *flags)
            assert code == 0 and out.startswith("version "), out
            assert await _run("config", "get", "w", "prompt", "p", *flags) == (0, '"hi"\n')
            assert await _run("config", "list", "w", "prompt", *flags) == (0, "p\n")
            assert (await _run("config", "get", "w", "prompt", "nope", *flags))[0] == 1
            async with ConfigClient(cp.backend(), timeout=30) as c:
                assert await c.get("w", "prompt", "p") == '"hi"'

            code, out = await _run("flows", "list", "w", *flags)
            assert (code, out) == (0, "")
            code, out = await _run("flows", "stop", "w", "ghost", *flags)
            assert code == 1 and "not-found" in out, out
        finally:
            await cp.close()


def test_conformance_runs_the_battery_on_the_named_backend() -> None:
    out = subprocess.run(
        [TG, "conformance", "--pubsub-backend", "memory", "-k", "test_01 or test_16", "--short"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
