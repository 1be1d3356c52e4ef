"""The bootstrapper (console script ``bootstrap``): converge, then idle.

A long-running reconciliation loop over initialisers.  The specs come from
``-c/--initialisers-file`` (YAML or JSON) or, embedded, from the
``initialisers`` parameter::

    initialisers:
      - class: bootstrap.initialisers.TemplateSeed   # dotted path
        name: template                                 # unique
        flag: v1                                       # bump to run it again
        params: {config_file: template.json}

A bad file (not a list, a missing key, a duplicate name, a class that does
not import, a constructor that refuses its params) is refused at start-up
with a message naming the entry, and the process exits 1.

Each wake:

1. open short-lived config and flow clients (nothing is held between wakes);
2. read the stored flags (``__system__/init-state/<name>``) if the config
   service answers quickly;
3. run the initialisers marked ``wait_for_services = False`` whose flag is not
   known to be stored (the config service may be down: they prepare what it
   stands on);
4. the gate: one cheap round trip to the config service and one to the flow
   service; if either does not answer, sleep ``--gate-interval`` (5 s);
5. run every other initialiser whose configured flag differs from its stored
   flag, in file order, and store the new flag after each success (and the
   flags of the pre-gate ones that succeeded).  One failing initialiser is
   logged and does not stop the others; it runs again at the next wake;
6. sleep ``--converge-interval`` (15 s) while some flag is not stored, else
   ``--steady-interval`` (300 s): the loop keeps checking, so a flag bumped in
   the store, or state lost with it, is noticed.

The loop never dies on an exception (it is supervised, see
``AsyncProcessor``); SIGTERM stops it between or during wakes and exits 0.
``converged`` is set once every flag is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustgraph_pubsub import ConfigurationError, PubSubError, ServiceError
from trustgraph_pubsub.config_client import ConfigClient
from trustgraph_pubsub.flow_client import FlowClient
from trustgraph_pubsub.processor import AsyncProcessor, env_default, seconds_param

from .initialiser import InitContext, Initialiser, InitialiserError

log = logging.getLogger(__name__)

__all__ = ["Bootstrapper", "InitialiserSpec", "load_initialisers", "main"]

SYSTEM = "__system__"
INIT_STATE = "init-state"


@dataclass
class InitialiserSpec:
    """One entry of the initialisers file, with its constructed initialiser."""

    name: str
    flag: str
    cls_path: str
    params: dict[str, Any]
    initialiser: Initialiser


def _import(path: str) -> Any:
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ImportError(f"{path!r} is not a dotted path to a class")
    return getattr(importlib.import_module(module), attr)


def read_specs_file(path: str | Path) -> Any:
    """The raw ``initialisers`` list of a YAML or JSON file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigurationError(f"initialisers file {p}: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigurationError(f"initialisers file {p} does not parse: {exc}") from None
    if isinstance(data, dict):
        data = data.get("initialisers")
    if not isinstance(data, list):
        raise ConfigurationError(
            f"initialisers file {p}: expected a list under 'initialisers'"
        )
    return data


def load_initialisers(raw: Any, *, base: Path | None = None) -> list[InitialiserSpec]:
    """Check and construct every entry; ``ConfigurationError`` names the bad one.

    ``base`` is the directory relative file paths in params (``config_file``,
    ``seed_file``) are resolved against: the initialisers file's own.
    """
    if not isinstance(raw, list):
        raise ConfigurationError("initialisers must be a list of {class, name, flag, params}")
    specs: list[InitialiserSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"initialisers[{i}]"
        if not isinstance(entry, dict):
            raise ConfigurationError(f"{where}: expected a mapping with class, name, flag, params")
        name = entry.get("name")
        if isinstance(name, str) and name:
            where = f"{where} ({name!r})"
        missing = [k for k in ("class", "name", "flag") if entry.get(k) in (None, "")]
        if missing:
            raise ConfigurationError(f"{where}: missing {', '.join(missing)}")
        unknown = sorted(set(entry) - {"class", "name", "flag", "params"})
        if unknown:
            raise ConfigurationError(f"{where}: unknown key(s) {', '.join(unknown)}")
        if not isinstance(name, str) or not all(c.isalnum() or c in "_.-" for c in name):
            raise ConfigurationError(f"{where}: name must use only letters, digits, '_', '.', '-'")
        if name in seen:
            raise ConfigurationError(f"{where}: duplicate name {name!r}")
        seen.add(name)
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigurationError(f"{where}: params must be a mapping")
        cls_path = str(entry["class"])
        try:
            cls = _import(cls_path)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"{where}: class {cls_path!r} not found ({exc})") from None
        if not (isinstance(cls, type) and issubclass(cls, Initialiser)):
            raise ConfigurationError(f"{where}: {cls_path!r} is not an Initialiser subclass")
        params = dict(params)
        if base is not None:
            for key in ("config_file", "seed_file"):
                if isinstance(params.get(key), str) and not Path(params[key]).is_absolute():
                    params[key] = str(base / params[key])
        try:
            initialiser = cls(**params)
        except Exception as exc:
            raise ConfigurationError(
                f"{where}: {cls_path} refused its params: {type(exc).__name__}: {exc}"
            ) from None
        specs.append(InitialiserSpec(name, str(entry["flag"]), cls_path, params, initialiser))
    return specs


class Bootstrapper(AsyncProcessor):
    """Runs initialisers until every flag is stored, then keeps checking."""

    default_ident = "bootstrap"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        raw = params.get("initialisers")
        path = params.get("initialisers_file")
        if raw is None and path is None:
            raise ConfigurationError("give -c/--initialisers-file (or initialisers= when embedded)")
        if raw is None and path is not None:
            raw = read_specs_file(path)
        base = Path(path).resolve().parent if path is not None else None
        self.specs = load_initialisers(raw, base=base)
        self.gate_interval = seconds_param(params, "gate_interval", 5.0)
        self.converge_interval = seconds_param(params, "converge_interval", 15.0)
        self.steady_interval = seconds_param(params, "steady_interval", 300.0)
        self.service_timeout = seconds_param(params, "service_timeout", 5.0)
        self.flow_timeout = seconds_param(params, "flow_timeout", 120.0)
        #: flags known to be stored (what the last read, or this process, stored)
        self.stored: dict[str, str] = {}
        self.converged = asyncio.Event()
        self.wakes = 0
        #: "gate", "converging" or "converged": how the last wake ended
        self.state = "starting"
        self._wake = asyncio.Event()

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        super().add_args(parser)
        parser.add_argument(
            "-c", "--initialisers-file", default=env_default("INITIALISERS_FILE"),
            help="YAML or JSON file listing the initialisers (env INITIALISERS_FILE)",
        )
        for flag, env, default, what in (
            ("--gate-interval", "GATE_INTERVAL", 5.0, "while the services do not answer"),
            ("--converge-interval", "CONVERGE_INTERVAL", 15.0, "while some initialiser is pending"),
            ("--steady-interval", "STEADY_INTERVAL", 300.0, "once every flag is stored"),
            ("--service-timeout", "SERVICE_TIMEOUT", 5.0, "gate and flag reads: seconds per request"),
        ):
            parser.add_argument(flag, type=float, default=env_default(env, default),
                                help=f"seconds between wakes {what} (env {env}, default {default:g})"
                                if "interval" in flag else f"{what} (env {env}, default {default:g})")

    async def on_start(self) -> None:
        self.supervise("reconcile", self._loop)

    def wake_now(self) -> None:
        """Run a wake now instead of at the end of the current sleep."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:  # (a lost cancellation ends it too)
            self._wake.clear()
            began = time.monotonic()
            self.state = await self.wake()
            interval = {"gate": self.gate_interval, "converging": self.converge_interval}.get(
                self.state, self.steady_interval
            )
            log.info("wake %d: %s in %.1fs; next in %gs", self.wakes, self.state,
                     time.monotonic() - began, interval)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()

    async def _read_flags(self, config: ConfigClient, timeout: float) -> dict[str, str] | None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                values = await config.values(SYSTEM, INIT_STATE)
        except (PubSubError, TimeoutError):
            return None
        out: dict[str, str] = {}
        for name, text in values.items():
            try:
                out[name] = str(json.loads(text))
            except ValueError:
                out[name] = text
        return out

    async def wake(self) -> str:
        """One pass; how it ended: ``gate``, ``converging`` or ``converged``."""
        self.wakes += 1
        config = ConfigClient(self.backend, timeout=self.service_timeout, metrics=self.metrics)
        flows = FlowClient(self.backend, timeout=self.flow_timeout, metrics=self.metrics)
        await asyncio.gather(config.start(), flows.start())
        try:
            return await self._wake_with(config, flows)
        finally:
            await asyncio.gather(config.stop(), flows.stop(), return_exceptions=True)

    async def _wake_with(self, config: ConfigClient, flows: FlowClient) -> str:
        flags = await self._read_flags(config, self.service_timeout)
        if flags is not None:
            self.stored = flags
        done_pre: list[InitialiserSpec] = []
        for spec in self.specs:
            if not spec.initialiser.wait_for_services and self.stored.get(spec.name) != spec.flag:
                if await self._run(spec, config, flows):
                    done_pre.append(spec)
        for client in (config, flows):
            why = await self._answers(client)
            if why is not None:
                log.info("gate: the %s does not answer yet (%s)", client.service, why)
                return "gate"
        if flags is None:
            flags = await self._read_flags(config, self.service_timeout)
            if flags is None:
                return "gate"
            self.stored = flags
        for spec in done_pre:
            await self._store(config, spec)
        pending = 0
        for spec in self.specs:
            if self.stored.get(spec.name) == spec.flag:
                continue
            if spec.initialiser.wait_for_services and await self._run(spec, config, flows):
                await self._store(config, spec)
            if self.stored.get(spec.name) != spec.flag:
                pending += 1
        if pending:
            return "converging"
        self.converged.set()
        return "converged"

    async def _answers(self, client: ConfigClient | FlowClient) -> PubSubError | None:
        """None when the service answers one cheap request (an error answer counts)."""
        try:
            await client.call(client.ping_request(), timeout=self.service_timeout)  # type: ignore[arg-type]
        except ServiceError:
            return None
        except PubSubError as exc:
            return exc
        return None

    async def _run(self, spec: InitialiserSpec, config: ConfigClient, flows: FlowClient) -> bool:
        ctx = InitContext(
            name=spec.name,
            log=logging.LoggerAdapter(logging.getLogger(f"bootstrap.init.{spec.name}"), {}),
            backend=self.backend, config=config, flows=flows, settings=self.params,
        )
        old = self.stored.get(spec.name)
        began = time.monotonic()
        try:
            await spec.initialiser.run(ctx, old, spec.flag)
        except (InitialiserError, PubSubError) as exc:
            log.warning("initialiser %s (flag %s) failed: %s: %s; retrying at the next wake",
                        spec.name, spec.flag, type(exc).__name__, exc)
            return False
        except Exception:
            log.exception("initialiser %s (flag %s) failed; retrying at the next wake",
                          spec.name, spec.flag)
            return False
        log.info("initialiser %s ran (flag %s -> %s) in %.2fs", spec.name, old, spec.flag,
                 time.monotonic() - began)
        return True

    async def _store(self, config: ConfigClient, spec: InitialiserSpec) -> None:
        try:
            await config.put(SYSTEM, INIT_STATE, spec.name, json.dumps(spec.flag))
        except PubSubError as exc:
            log.warning("could not store the flag of %s (%s); it runs again next wake", spec.name, exc)
            return
        self.stored[spec.name] = spec.flag


def main(argv: Sequence[str] | None = None) -> None:
    Bootstrapper.launch("bootstrap", __doc__ or "", argv)


if __name__ == "__main__":
    main()
