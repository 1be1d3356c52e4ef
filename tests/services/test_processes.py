"""The control plane as real processes, started from their console scripts, per broker.

One test per broker runs ``config-svc``, ``flow-svc`` and the example
``chunker`` as separate processes with the broker's flags, and drives them
from the test:

1. a blueprint is put, a flow started and a request answered through it;
2. stop-flow is interrupted: flow-svc is killed with SIGKILL between the
   two stop phases (its ``--release-wait`` holds it there), then started
   again; it finishes the stop by itself and leaves no processor entry, no
   queue (where the backend can tell) and no flow record behind;
3. every service exits 0 on SIGTERM.

The in-memory backend cannot cross processes, so it is not here; its
in-process battery is ``test_control_plane_memory.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bootstrap.initialisers.queues import CONTROL_QUEUES
from tests.brokers import Broker
from tests.services.helpers import CHUNK_SIZE_TYPE, chunk_blueprint, chunk_topics, eventually
from trustgraph_pubsub import PubSubBackend, RequestResponse, ServiceError
from trustgraph_pubsub.config_client import ConfigClient
from trustgraph_pubsub.flow_client import FlowClient
from trustgraph_schema import TextChunkRequest, TextChunkResponse

WAIT = 90.0
BIN = Path(sys.executable).parent


def broker_flags(broker: Broker) -> list[str]:
    """``--pubsub-backend <name>`` and the broker's options as command-line flags."""
    flags = ["--pubsub-backend", broker.name]
    for key, value in broker.backend_config().items():
        if value is not None:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


class Service:
    """One service process, its output in a log file."""

    def __init__(self, script: str, args: list[str], log: Path) -> None:
        self.script = script
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": os.environ.get("TG_SERVICE_LOG_LEVEL", "INFO")}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / script), *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    async def terminate(self, within: float = 30.0) -> int:
        """SIGTERM; the exit status (SIGKILL and a failure after ``within`` s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), within)
        except TimeoutError:
            self.kill()
            pytest.fail(f"{self.script} did not stop within {within}s of SIGTERM:\n{self.tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ProcessBattery:
    broker_name: ClassVar[str]

    @pytest.fixture
    def services(self, tmp_path: Path) -> Iterator[list[Service]]:
        started: list[Service] = []
        yield started
        for s in started:
            s.kill()

    @pytest.fixture
    async def client_backend(self, broker: Broker) -> AsyncIterator[PubSubBackend]:
        b = broker.make_backend()
        yield b
        await b.close()

    async def test_services_as_processes(
        self, broker: Broker, services: list[Service], client_backend: PubSubBackend,
        tmp_path: Path,
    ) -> None:
        flags = broker_flags(broker)
        # Requests an earlier run left in the services' durable queues (a killed
        # flow-svc's stop-flow, say) would be served by this run's services.
        for topic, sub in CONTROL_QUEUES:
            with contextlib.suppress(Exception):
                await client_backend.delete_queue(topic, sub)

        def start(script: str, *extra: str, log: str | None = None) -> Service:
            s = Service(script, [*flags, *extra], tmp_path / f"{log or script}.log")
            services.append(s)
            return s

        def logs() -> str:
            return "\n".join(f"--- {s.log.name}\n{s.tail()}" for s in services)

        config_svc = start("config-svc", "--config-db", str(tmp_path / "config.db"),
                           "--concurrency", "4")
        chunker = start("chunker")
        flow_svc = start("flow-svc", "--release-wait", "0.5")
        backend = client_backend
        request_t, response_t = chunk_topics("proc", "f1")
        try:
            async with ConfigClient(backend, timeout=WAIT) as config, \
                    FlowClient(backend, timeout=WAIT) as flows:
                # A request sent before a service subscribed may be lost: wait for them.
                await config.wait_until_up(WAIT)
                await flows.wait_until_up(WAIT)
                # 1. a flow, end to end
                await config.put("proc", "parameter-type", "chunk-size", CHUNK_SIZE_TYPE)
                await flows.put_blueprint("proc", "chunks", chunk_blueprint())
                await flows.start_flow("proc", "f1", "chunks")
                async with RequestResponse(backend, request_t, TextChunkRequest,
                                           response_t, TextChunkResponse) as rr:
                    reply = await _first_answer(rr, TextChunkRequest("abcdefgh"))
                    assert reply.chunks == ["abcd", "efgh"]

                # 2. kill flow-svc between the stop phases, restart it
                await flow_svc.terminate()
                assert flow_svc.proc.returncode == 0, flow_svc.tail()
                flow_svc = start("flow-svc", "--release-wait", "600", log="flow-svc-slow")
                await flows.wait_until_up(WAIT)
                stopping = asyncio.create_task(flows.stop_flow("proc", "f1"))

                async def marked_stopping() -> bool:
                    text = await config.get("__system__", "flow-stopping", "proc:f1")
                    return text is not None and json.loads(text).get("status") == "stopping"

                await eventually(marked_stopping, WAIT, what="the flow filed as stopping")
                assert await config.keys("proc", "processor:chunker") == []
                assert await flows.list_flows("proc") == []
                flow_svc.kill()  # SIGKILL: between phase 1 and phase 2
                stopping.cancel()
                with contextlib.suppress(asyncio.CancelledError, ServiceError):
                    await stopping
                if backend.capabilities.queue_lifecycle:
                    assert await backend.queue_exists(request_t, "chunker")  # not yet deleted
                flow_svc = start("flow-svc", "--release-wait", "0.5", log="flow-svc-again")

                async def record_gone() -> bool:
                    return await config.get("__system__", "flow-stopping", "proc:f1") is None

                await eventually(record_gone, WAIT, what="the restarted flow-svc to finish the stop")
                assert await config.keys("proc", "processor:chunker") == []
                assert await flows.list_flows("proc") == []
                if backend.capabilities.queue_lifecycle:
                    assert not await backend.queue_exists(request_t, "chunker")
        except BaseException:
            print(logs())
            raise

        # 3. SIGTERM: every service drains and exits 0
        for s in (flow_svc, chunker, config_svc):
            code = await s.terminate()
            assert code == 0, f"{s.script} exited {code}:\n{s.tail()}"
        assert "stopped" in config_svc.tail()


async def _first_answer(rr: RequestResponse, request: Any) -> Any:
    """The chunker may still be starting its flow: ask until it answers."""
    for _ in range(int(WAIT / 2)):
        try:
            return await rr.request(request, timeout=2.0)
        except Exception as exc:  # a timeout while the flow's consumer is being made
            last = exc
    raise AssertionError(f"the chunker never answered: {last}")


class TestProcessesPulsar(ProcessBattery):
    broker_name = "pulsar"


class TestProcessesKafka(ProcessBattery):
    broker_name = "kafka"


class TestProcessesRabbitMQ(ProcessBattery):
    broker_name = "rabbitmq"


class TestProcessesMQTT(ProcessBattery):
    broker_name = "mqtt"
