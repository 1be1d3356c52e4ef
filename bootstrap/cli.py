"""``tg-pubsub``: the project's command line.

    tg-pubsub dev [--pubsub-backend B] [--until-converged]   a whole deployment, locally
    tg-pubsub send TOPIC JSON [-p k=v ...] [--key K]         publish one message
    tg-pubsub listen TOPIC [--earliest] [-n N]               print messages as they arrive
    tg-pubsub config get|put|delete|list|dump ...            the config service
    tg-pubsub flows list|show|start|stop|blueprints ...      the flow service
    tg-pubsub conformance [-k EXPR]                          the conformance battery, on your broker
    tg-pubsub bench [--quick] [--brokers ...] [--plot]       the benchmark suite (benchmarks/suite.py)

Every subcommand takes the usual pub/sub flags (``--pubsub-backend``,
``--pulsar-host`` ...) with their environment fallbacks, so ``tg-pubsub``
talks to whatever broker the services use.  ``send`` publishes the JSON text
as it is (no schema): any service reading that topic decodes it with its own.
``listen`` uses an ephemeral subscription unless ``--subscription`` names a
durable one, so it leaves nothing behind; like ``kcat -C`` or
``mosquitto_sub``, it prints one line per message (properties, then the
payload) until Ctrl-C or ``-n`` messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustgraph_pubsub import (
    ConfigurationError,
    Consumer,
    Message,
    Producer,
    PubSubError,
    add_pubsub_args,
    get_pubsub,
)
from trustgraph_pubsub.config_client import ConfigClient
from trustgraph_pubsub.flow_client import FlowClient

__all__ = ["main"]


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"{what} {item!r}: expected key=value")
        out[key] = value
    return out


async def _send(a: dict[str, Any]) -> int:
    try:
        json.loads(a["message"])
    except ValueError as exc:
        raise ConfigurationError(f"the message is not JSON: {exc}") from None
    backend = get_pubsub(**a)
    try:
        async with Producer(backend, a["topic"], None) as producer:
            await producer.send(a["message"].encode(), _pairs(a["property"], "--property"),
                                key=a.get("key"))
    finally:
        await backend.close()
    print(f"sent to {a['topic']}")
    return 0


async def _listen(a: dict[str, Any]) -> int:
    backend = get_pubsub(**a)
    stop = asyncio.Event()
    seen = 0
    limit = a.get("count")

    async def show(msg: Message) -> None:
        nonlocal seen
        props = msg.properties()
        data = msg.data()
        try:
            text = data.decode()
        except UnicodeDecodeError:
            text = f"<{len(data)} bytes>"
        head = " ".join(f"{k}={v}" for k, v in sorted(props.items()))
        print(f"{head}{' ' if head else ''}{text}", flush=True)
        seen += 1
        if limit and seen >= limit:
            stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    named = a.get("subscription")
    consumer = Consumer(
        backend, a["topic"], named or f"listen-{uuid.uuid4().hex[:12]}", None, show,
        initial_position="earliest" if a.get("earliest") else "latest", ephemeral=not named,
    )
    try:
        async with consumer:
            print(f"listening on {a['topic']} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            await stop.wait()
    finally:
        await backend.close()
    return 0


async def _config(a: dict[str, Any]) -> int:
    backend = get_pubsub(**a)
    try:
        async with ConfigClient(backend, timeout=a["timeout"]) as c:
            op = a["op"]
            if op == "get":
                value = await c.get(a["workspace"], a["type"], a["key"])
                if value is None:
                    print(f"no {a['type']}/{a['key']} in {a['workspace']}", file=sys.stderr)
                    return 1
                print(value)
            elif op == "put":
                print(f"version {await c.put(a['workspace'], a['type'], a['key'], a['value'])}")
            elif op == "delete":
                print(f"version {await c.delete(a['workspace'], a['type'], a['key'])}")
            elif op == "list":
                for key in await c.keys(a["workspace"], a["type"]):
                    print(key)
            elif op == "dump":
                print(json.dumps(await c.get_all(a["workspace"]), indent=2, sort_keys=True))
    finally:
        await backend.close()
    return 0


async def _flows(a: dict[str, Any]) -> int:
    backend = get_pubsub(**a)
    try:
        async with FlowClient(backend, timeout=a["timeout"]) as f:
            op, ws = a["op"], a["workspace"]
            if op == "list":
                for fid in await f.list_flows(ws):
                    print(fid)
            elif op == "show":
                print(json.dumps(await f.get_flow(ws, a["flow_id"]), indent=2, sort_keys=True))
            elif op == "blueprints":
                for name in await f.list_blueprints(ws):
                    print(name)
            elif op == "start":
                await f.start_flow(ws, a["flow_id"], a["blueprint"], description=a["description"],
                                   parameters=_pairs(a["param"], "--param"))
                print(f"started {ws}/{a['flow_id']}")
            elif op == "stop":
                await f.stop_flow(ws, a["flow_id"])
                print(f"stopped {ws}/{a['flow_id']}")
    finally:
        await backend.close()
    return 0


#: the environment the conformance fixtures read, per backend option
_CONFORMANCE_ENV = {
    "pulsar_host": "TG_PULSAR_URL",
    "pulsar_admin_url": "TG_PULSAR_ADMIN_URL",
    "pulsar_api_key": "TG_PULSAR_API_KEY",
    "kafka_bootstrap_servers": "TG_KAFKA_BOOTSTRAP",
    "rabbitmq_host": "RABBITMQ_HOST",
    "rabbitmq_port": "RABBITMQ_PORT",
    "rabbitmq_username": "RABBITMQ_USERNAME",
    "rabbitmq_password": "RABBITMQ_PASSWORD",
    "rabbitmq_vhost": "RABBITMQ_VHOST",
    "mqtt_host": "MQTT_HOST",
    "mqtt_port": "MQTT_PORT",
}


def _conformance(a: dict[str, Any]) -> int:
    """Run the battery of ``tests/conformance`` against the broker the flags name.

    The battery ships with the source tree (it is pytest code with broker
    fixtures), so this works from a checkout installed with ``pip install -e
    '.[test,all]'``.  Flags become the environment the fixtures read
    (``TG_PULSAR_URL``, ``TG_KAFKA_BOOTSTRAP``, ``RABBITMQ_HOST`` ...); without
    them the fixtures start pulsar-lite or tansu themselves.  Skips name the
    capability or the broker quirk that excludes a case.
    """
    name = a.get("pubsub_backend") or os.environ.get("PUBSUB_BACKEND") or "pulsar"
    root = Path(__file__).resolve().parent.parent
    module = root / "tests" / "conformance" / f"test_{name}.py"
    if not module.is_file():
        print(f"tg-pubsub conformance: no battery for backend {name!r} at {module}; it ships with "
              "the source tree: run from a checkout (pip install -e '.[test,all]')", file=sys.stderr)
        return 2
    env = dict(os.environ)
    for key, var in _CONFORMANCE_ENV.items():
        if a.get(key) is not None:
            env[var] = str(a[key])
    argv = [sys.executable, "-m", "pytest", str(module), "-rs", "-p", "no:cacheprovider"]
    if a.get("k"):
        argv += ["-k", a["k"]]
    if a.get("short"):
        env["TG_CONFORMANCE_SHORT"] = "1"
    return subprocess.call(argv, cwd=root, env=env)


def _bench(args: list[str]) -> int:
    """``python -m benchmarks.suite`` from the source tree (the suite ships with it)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "suite.py").is_file():
        print("tg-pubsub bench: the benchmark suite ships with the source tree; run it from a "
              "checkout (pip install -e '.[all,bench,embedded,test]')", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks.suite", *args], cwd=root)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tg-pubsub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # The broker flags, accepted on every leaf command (after its own arguments too).
    common = argparse.ArgumentParser(add_help=False)
    add_pubsub_args(common)
    common.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "WARNING"), type=str.upper)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, leaf: bool = True) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common] if leaf else [])

    from .dev import add_dev_args

    add_dev_args(command("dev", "start a broker and the whole control plane, converge, report"))

    p = command("send", "publish one JSON message to a topic")
    p.add_argument("topic")
    p.add_argument("message", help="JSON text")
    p.add_argument("-p", "--property", action="append", help="a message property key=value")
    p.add_argument("--key", default=None, help="ordering/partition key")

    p = command("listen", "print the messages of a topic as they arrive")
    p.add_argument("topic")
    p.add_argument("--subscription", default=None, help="a durable subscription (default: ephemeral)")
    p.add_argument("--earliest", action="store_true", help="start from the oldest retained message")
    p.add_argument("-n", "--count", type=int, default=None, help="stop after N messages")

    p = command("config", "get, put, delete, list or dump config entries", leaf=False)
    ops = p.add_subparsers(dest="op", required=True)
    for op, args in (("get", ("workspace", "type", "key")), ("put", ("workspace", "type", "key", "value")),
                     ("delete", ("workspace", "type", "key")), ("list", ("workspace", "type")),
                     ("dump", ("workspace",))):
        q = ops.add_parser(op, parents=[common])
        q.add_argument("--timeout", type=float, default=10.0)
        for arg in args:
            q.add_argument(arg)

    p = command("flows", "list, show, start or stop flows", leaf=False)
    ops = p.add_subparsers(dest="op", required=True)
    for op, args in (("list", ("workspace",)), ("blueprints", ("workspace",)),
                     ("show", ("workspace", "flow_id")), ("stop", ("workspace", "flow_id")),
                     ("start", ("workspace", "flow_id", "blueprint"))):
        q = ops.add_parser(op, parents=[common])
        q.add_argument("--timeout", type=float, default=120.0)
        for arg in args:
            q.add_argument(arg)
        if op == "start":
            q.add_argument("--description", default="")
            q.add_argument("--param", action="append", help="a parameter name=value")

    sub.add_parser("bench", help="run the benchmark suite (benchmarks/suite.py; its flags follow)")

    p = command("conformance", "run the conformance battery against the broker the flags name")
    p.add_argument("-k", default=None, help="only cases matching this pytest expression")
    p.add_argument("--short", action="store_true", help="message counts divided by ten")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:  # every flag after it is the suite's
        sys.exit(_bench(args[1:]))
    a = vars(_parser().parse_args(args))
    import logging

    logging.basicConfig(level=a.get("log_level") or "WARNING",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = a["command"]
    try:
        if command == "dev":
            from .dev import main_dev

            code = main_dev(a)
        elif command == "conformance":
            code = _conformance(a)
        else:
            runner = {"send": _send, "listen": _listen, "config": _config, "flows": _flows}[command]
            code = asyncio.run(runner(a))
    except PubSubError as exc:
        print(f"tg-pubsub {command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
