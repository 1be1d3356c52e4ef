"""``tg-pubsub dev``: a whole deployment on one machine, with one command.

Starts a broker (``embedded.py``: pulsar-lite by default, tansu for
``--pubsub-backend kafka``, the local RabbitMQ or Mosquitto when asked, or
nothing for ``memory``), then the config service, the flow service, the
example chunker and the bootstrapper with the bundled initialisers file
(``data/initialisers.yaml``, which seeds ``data/template.json``, fills the
``default`` workspace and starts the ``default`` flow).  Each service is a
child process with the same broker flags (with ``memory`` they all run in
this process, since an in-process broker cannot be shared).

It prints progress as the deployment converges (every initialiser's flag
stored), then a table of the converged state (workspaces, flows,
processors, queues), then sends one request through the default flow and
prints the answer.  It keeps running until Ctrl-C or SIGTERM, or exits 0 at
once with ``--until-converged`` (1 if it did not converge within
``--timeout`` seconds).  On a system broker that outlives the run
(RabbitMQ, Mosquitto) with the default temporary workdir, the flows are
stopped first, so their queues do not outlive the config that named them.
On such a broker a run with a new config database first deletes the config
and flow services' request queues: a request still waiting there was sent
to another run (or a benchmark, or a test), and served against this run's
empty store it would start flows nobody asked this run for.  Either way every child it started is stopped
(SIGTERM, then SIGKILL), and children die with it even if it is killed
(``PR_SET_PDEATHSIG``), so no service or broker process is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trustgraph_pubsub import PubSubBackend, PubSubError, RequestResponse, get_pubsub
from trustgraph_pubsub.config_client import ConfigClient
from trustgraph_pubsub.factory import BACKEND_OPTIONS
from trustgraph_pubsub.flow_client import FlowClient
from trustgraph_schema import TextChunkRequest, TextChunkResponse

from .bootstrapper import INIT_STATE, SYSTEM, load_initialisers, read_specs_file
from .embedded import EmbeddedBrokerError, child_preexec, embedded_broker, terminate

__all__ = ["DATA", "run_dev"]

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_INITIALISERS = DATA / "initialisers.yaml"
SAMPLE = "TrustGraph services talk over Pulsar, Kafka, RabbitMQ or MQTT."

#: (name, module whose main() runs it); run as ``python -c`` so loggers keep their module names
SERVICES = (
    ("config-svc", "bootstrap.config_service.service"),
    ("flow-svc", "bootstrap.flow_service.service"),
    ("chunker", "bootstrap.processors.chunker"),
    ("bootstrap", "bootstrap.bootstrapper"),
)


def add_dev_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until-converged", action="store_true",
                        help="exit 0 once converged (after the state table and one request)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to converge before giving up (default 120)")
    parser.add_argument("-c", "--initialisers-file", default=str(DEFAULT_INITIALISERS),
                        help="initialisers (default: the bundled demo)")
    parser.add_argument("--workdir", default=None,
                        help="where the config database and service logs go (default: a temp dir)")


class _Clock:
    def __init__(self) -> None:
        self.began = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:5.1f}s] {text}", flush=True)


def _flags(config: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in config.items():
        if value is not None:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


class _Children:
    """The service processes of a dev run, logs in ``workdir/logs``."""

    def __init__(self, workdir: Path) -> None:
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, module: str, args: list[str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-c", f"from {module} import main; main()", *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=child_preexec,
            )

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> dict[str, int]:
        """Stop the children in the reverse of their start order, each after the
        last has exited (bootstrapper first, config service last); exit codes.

        Why one at a time: a service's in-flight work may wait on a service
        started before it (the flow service on the config service), and it
        drains faster when that one still answers.  Each service bounds its own
        drain (``--drain-timeout``), so a SIGTERM at once would also end."""
        codes = {}
        for name, p in reversed(list(self.procs.items())):
            terminate(p, grace=15.0)
            codes[name] = p.returncode
        return codes


async def _converged(config: ConfigClient, flags: dict[str, str], clock: _Clock,
                     reported: set[str]) -> bool:
    try:
        stored = await config.values(SYSTEM, INIT_STATE)
    except PubSubError:
        return False
    done = True
    for name, flag in flags.items():
        text = stored.get(name)
        ok = text is not None and json.loads(text) == flag
        if ok and name not in reported:
            reported.add(name)
            clock.say(f"initialiser {name} done (flag {flag})")
        done = done and ok
    return done


async def _state(backend: PubSubBackend, config: ConfigClient) -> tuple[list[list[str]], dict[str, Any]]:
    """Rows of the state table, and the default flow's record (if any): the flow
    ``default`` of workspace ``default`` the bundled initialisers start, else the
    first one listed."""
    workspaces = set(await config.keys("__workspaces__", "workspace"))
    flows_by_ws = await config.values_all_workspaces("flow")
    workspaces |= set(flows_by_ws)
    rows: list[list[str]] = []
    default: dict[str, Any] = {}
    for ws in sorted(workspaces):
        flows = flows_by_ws.get(ws, {})
        if not flows:
            rows.append([ws, "-", "-", "-", "-", "-"])
        for fid, text in sorted(flows.items()):
            record = json.loads(text)
            if not default or (ws, fid) == ("default", "default"):
                default = record
            processors = []
            for p, variant in record.get("processors", []):
                present = await config.get(ws, f"processor:{p}", variant) is not None
                processors.append(f"{p}/{variant}" + ("" if present else " (missing)"))
            queues = []
            for topic, sub in record.get("queues", []):
                if backend.capabilities.queue_lifecycle:
                    state = "exists" if await backend.queue_exists(topic, sub) else "MISSING"
                else:
                    state = "implicit"
                queues.append(f"{topic} [{sub}, {state}]")
            rows.append([ws, fid, record.get("blueprint-name", "?"), record.get("status", "?"),
                         ", ".join(processors) or "-", "; ".join(queues) or "-"])
    return rows, default


def _print_table(rows: list[list[str]]) -> None:
    head = ["workspace", "flow", "blueprint", "status", "processors", "queues"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print()


async def _one_request(backend: PubSubBackend, record: dict[str, Any], clock: _Clock) -> bool:
    chunk = record.get("interfaces", {}).get("chunk")
    if not isinstance(chunk, dict):
        clock.say("the default flow has no 'chunk' interface; no request sent")
        return True
    async with RequestResponse(backend, chunk["request"], TextChunkRequest,
                               chunk["response"], TextChunkResponse) as rr:
        deadline = time.monotonic() + 60
        while True:
            try:
                reply = await rr.request(TextChunkRequest(SAMPLE, chunk_size=24), timeout=3.0)
                break
            except PubSubError:
                if time.monotonic() > deadline:
                    clock.say("the default flow did not answer within 60 s")
                    return False
    clock.say(f"request through the default flow ({chunk['request']}):")
    for piece in reply.chunks:
        print(f"    {piece!r}")
    return reply.error is None


async def run_dev(
    args: dict[str, Any], specs_file: Path, flags: dict[str, str], workdir: Path, own_dir: bool
) -> int:
    """The dev run; ``flags`` are the initialisers' configured flags by name."""
    clock = _Clock()
    name = args.get("pubsub_backend") or "pulsar"
    options = {k: v for k, v in args.items() if any(k.startswith(f"{b}_") for b in BACKEND_OPTIONS)}
    broker = embedded_broker(name, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children = _Children(workdir)
    in_process: list[Any] = []
    backend: PubSubBackend | None = None
    code = 1
    try:
        try:
            await asyncio.to_thread(broker.start)
        except EmbeddedBrokerError as exc:
            print(f"tg-pubsub dev: {exc}", file=sys.stderr)
            return 1
        clock.say(f"{name} broker at {broker.address}")
        config_keys = {**options, **broker.config()}
        if name in ("rabbitmq", "mqtt") and not (workdir / "config.db").exists():
            await _forget_stale_requests(config_keys)
        fast = ["--gate-interval", "1", "--converge-interval", "2", "--service-timeout", "2"]
        if name == "memory":
            in_process = await _start_in_process(config_keys, workdir, specs_file, fast)
        else:
            common = _flags(config_keys)
            extra = {
                "config-svc": ["--config-db", str(workdir / "config.db"), "--concurrency", "4"],
                "flow-svc": ["--release-wait", "0.5"],
                "bootstrap": ["-c", str(specs_file), *fast],
            }
            for svc, module in SERVICES:
                children.spawn(svc, module, [*common, *extra.get(svc, [])])
            clock.say(f"started {', '.join(s for s, _ in SERVICES)} (logs in {children.logs})")
        backend = get_pubsub(**config_keys)
        code = await _watch(backend, flags, clock, children, stop, args)
        return code
    finally:
        if backend is not None:
            if own_dir and name in ("rabbitmq", "mqtt"):
                # The broker outlives this run and its config database does not:
                # stop the flows, so their queues do not outlive it either.
                with contextlib.suppress(Exception):
                    await _stop_flows(backend, clock)
            with contextlib.suppress(Exception):
                await backend.close()
        for proc in reversed(in_process):
            with contextlib.suppress(Exception):
                await proc.stop()
        codes = await asyncio.to_thread(children.stop)
        bad = {n: c for n, c in codes.items() if c != 0}
        if bad:
            clock.say(f"services that did not exit 0 on SIGTERM: {bad}")
            for svc in bad:
                # The workdir may be removed below; the operator sees why here.
                clock.say(f"the end of {svc}'s log:\n{children.tail(svc)}")
        await asyncio.to_thread(broker.stop)
        clock.say("stopped every service and the broker")
        if own_dir and code == 0:
            shutil.rmtree(workdir, ignore_errors=True)


async def _forget_stale_requests(config_keys: dict[str, Any]) -> None:
    """Delete the config and flow services' request queues (see the module docstring)."""
    from .config_service import ConfigService
    from .flow_service import FlowService

    backend = get_pubsub(**config_keys)
    try:
        for svc in (ConfigService, FlowService):
            try:
                await backend.delete_queue(svc.request_topic, svc.subscription)
            except PubSubError as exc:
                # Not fatal: the run goes on, but old requests may reach it.
                print(f"could not clear old requests for {svc.subscription}: {exc}", flush=True)
    finally:
        await backend.close()


async def _start_in_process(keys: dict[str, Any], workdir: Path, specs: Path, fast: list[str]) -> list[Any]:
    from .bootstrapper import Bootstrapper
    from .config_service import ConfigService, SqliteStore
    from .flow_service import FlowService
    from .processors.chunker import Chunker

    procs = [
        ConfigService(store=SqliteStore(workdir / "config.db"), concurrency=4, **keys),
        FlowService(release_wait=0.5, **keys),
        Chunker(**keys),
        Bootstrapper(initialisers_file=str(specs), gate_interval=1, converge_interval=2,
                     service_timeout=2, **keys),
    ]
    started = []
    for p in procs:
        await p.start()
        started.append(p)
    return started


async def _watch(backend: PubSubBackend, flags: dict[str, str], clock: _Clock,
                 children: _Children, stop: asyncio.Event, args: dict[str, Any]) -> int:
    deadline = time.monotonic() + float(args.get("timeout") or 120.0)
    reported: set[str] = set()
    async with ConfigClient(backend, timeout=5.0) as config, FlowClient(backend, timeout=5.0) as flows:
        for client in (config, flows):
            while not stop.is_set():
                _check_children(children)
                try:
                    await client.wait_until_up(2.0)
                    clock.say(f"{client.service} answers")
                    break
                except PubSubError:
                    if time.monotonic() > deadline:
                        clock.say(f"the {client.service} did not answer in time")
                        return 1
        while not stop.is_set():
            _check_children(children)
            if await _converged(config, flags, clock, reported):
                break
            if time.monotonic() > deadline:
                clock.say(f"not converged within {args.get('timeout')}s; see the logs")
                return 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
        if stop.is_set():
            return 0
        clock.say("converged")
        rows, record = await _state(backend, config)
        _print_table(rows)
        if record and not await _one_request(backend, record, clock):
            return 1
    if args.get("until_converged"):
        return 0
    clock.say("running; Ctrl-C to stop")
    while not stop.is_set():
        _check_children(children)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()
    return 0


class ChildDied(Exception):
    """A service process exited on its own."""


async def _stop_flows(backend: PubSubBackend, clock: _Clock) -> None:
    async with ConfigClient(backend, timeout=5.0) as config, FlowClient(backend, timeout=60.0) as flows:
        by_ws = await config.values_all_workspaces("flow")
        for ws, ids in sorted(by_ws.items()):
            for fid in sorted(ids):
                await flows.stop_flow(ws, fid)
                clock.say(f"stopped flow {ws}/{fid} (its queues go with this run's config)")


def _check_children(children: _Children) -> None:
    dead = children.dead()
    if dead:
        name = dead[0]
        raise ChildDied(
            f"tg-pubsub dev: {name} exited with {children.procs[name].returncode}:\n{children.tail(name)}"
        )


def main_dev(args: dict[str, Any]) -> int:
    logging.basicConfig(level=args.get("log_level") or "WARNING",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        specs_file = Path(args["initialisers_file"]).resolve()
        specs = load_initialisers(read_specs_file(specs_file), base=specs_file.parent)
        own_dir = args.get("workdir") is None
        workdir = Path(args["workdir"] or tempfile.mkdtemp(prefix="tg-dev-"))
        workdir.mkdir(parents=True, exist_ok=True)
        flags = {s.name: s.flag for s in specs}
        return asyncio.run(run_dev(args, specs_file, flags, workdir, own_dir))
    except (ChildDied, PubSubError) as exc:
        print(exc, file=sys.stderr)
        return 1
