"""``AsyncProcessor``: the base of every service: flags, lifecycle, supervision, launch.

A processor is a long-running process built on the SDK.  Every processor
takes the same pub/sub flags (``add_pubsub_args``) plus ``--id``,
``--concurrency``, ``--metrics-port`` and ``--log-level``, each with an
environment fallback (``PROCESSOR_ID``, ``CONCURRENCY``, ``METRICS_PORT``,
``LOG_LEVEL``), so an operator moves a whole deployment to another broker
with one flag or one variable.

Lifecycle (explicit, as in aiokafka's clients):

* ``start()`` makes the backend with ``get_pubsub(**params)``, unless one was
  passed in as ``backend=`` (the caller then owns it and closes it), starts
  the Prometheus endpoint when ``metrics_port`` is set, then calls the
  subclass's ``on_start()``;
* ``stop()`` calls ``on_stop()``, where subclasses stop their consumers
  (``Consumer.stop`` lets in-flight handlers finish and be acknowledged),
  then cancels what is still supervised and closes an owned backend.
  Idempotent;
* ``run()`` starts, waits until ``request_stop()`` is called (by a signal
  under ``launch``), then stops; ``async with`` starts and stops.

Supervision: ``supervise(name, factory)`` runs ``await factory()`` in a task.
If it raises, or returns while the processor is still running, the failure is
logged and the factory runs again after a jittered backoff (the project's one
``Backoff``), reset once a run has lasted ``HEALTHY_AFTER`` seconds: a
consumer loop that dies is restarted, never silently dropped.  ``stop``
cancels supervised tasks and cancels again, every ``RECANCEL_AFTER`` seconds,
any that lost the cancellation and ran on, so a stop always ends.

``launch(ident, doc)`` is a console script's whole ``main``: parse argv (the
environment as fallback), configure logging, run the processor on a fresh
event loop with SIGTERM and SIGINT wired to ``request_stop``, exit 0 after a
clean stop and 1 when start-up failed.  A second signal while stopping cancels
the drain and exits at once (with status 1).  The process ends with
``os._exit`` once the loop has closed and logging and the standard streams are
flushed: by then every consumer is drained and every backend closed, and what
interpreter finalization would still do is run the destructors of native
clients, where pulsar-client's C++ threads can abort the process ("terminate
called without an active exception", apache/pulsar-client-python#256; seen
here after a subscribe timed out), turning a clean stop into status -6.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

from .backend import PubSubBackend
from .errors import ConfigurationError
from .factory import add_pubsub_args, get_pubsub
from .lifecycle import Lifecycle
from .metrics import Metrics, default_metrics
from .retry import Backoff

log = logging.getLogger(__name__)

__all__ = ["AsyncProcessor", "env_default", "seconds_param"]

#: a supervised task that ran this long without failing starts its backoff afresh.
HEALTHY_AFTER = 30.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def env_default(name: str, default: Any = None) -> Any:
    """The environment variable ``name`` if set and non-empty, else ``default``."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _positive_int(flag: str, value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{flag} must be an integer, got {value!r}") from exc
    if n < 1:
        raise ConfigurationError(f"{flag} must be at least 1, got {n}")
    return n


def seconds_param(params: Mapping[str, Any], name: str, default: float) -> float:
    """``params[name]`` (``default`` if absent) as a positive number of seconds;
    ``ConfigurationError`` naming the flag otherwise."""
    value = params.get(name)
    flag = f"--{name.replace('_', '-')}"
    try:
        out = float(default if value in (None, "") else value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{flag} must be a number of seconds, got {value!r}") from None
    if not out > 0:
        raise ConfigurationError(f"{flag} must be > 0, got {out}")
    return out


#: how long ``stop`` waits for cancelled tasks before cancelling them again.
RECANCEL_AFTER = 10.0

#: how long a stopping processor lets in-flight handlers finish (``--drain-timeout``).
#: A handler may wait on another service that is stopping too (all of a
#: deployment gets SIGTERM at once); without a bound its stop would outlast the
#: grace period (Kubernetes: 30 s) and end in SIGKILL.  A handler cut short
#: leaves its message unacknowledged, so it is redelivered, never lost.
DEFAULT_DRAIN_TIMEOUT = 10.0


async def _cancel_all(tasks: list[asyncio.Task[None]], ident: str) -> None:
    """Cancel ``tasks`` and wait until all have ended, cancelling again as needed.

    A cancellation can be lost: Python 3.11's ``asyncio.wait_for`` returns the
    inner result, swallowing the ``CancelledError``, when the inner awaitable
    finishes in the same loop iteration (a library may still use it), and a
    handler may catch ``CancelledError`` by mistake.  A supervised loop that
    lost its cancellation runs on and a single cancel-and-wait never returns,
    so a still-running task is cancelled again every ``RECANCEL_AFTER`` seconds.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
        for t in pending:
            log.warning("%r: task %s ignored its cancellation; cancelling it again",
                        ident, t.get_name())


class AsyncProcessor(Lifecycle):
    """Base class of a service; subclasses override ``on_start``/``on_stop``
    and, for their own flags, ``add_args`` (calling ``super().add_args``)."""

    #: the ``--id`` a processor gets when none is given.
    default_ident: ClassVar[str] = "processor"
    #: the ``--concurrency`` it gets when none is given.
    default_concurrency: ClassVar[int] = 1

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = params
        ident = params.get("id") or self.default_ident
        if not isinstance(ident, str):
            raise ConfigurationError(f"--id must be a string, got {type(ident).__name__}")
        self.id: str = ident
        concurrency = params.get("concurrency")
        self.concurrency = _positive_int(
            "--concurrency", self.default_concurrency if concurrency is None else concurrency
        )
        self.drain_timeout = seconds_param(params, "drain_timeout", DEFAULT_DRAIN_TIMEOUT)
        port = params.get("metrics_port")
        self.metrics_port: int | None = None
        if port not in (None, "", 0, "0"):
            self.metrics_port = _positive_int("--metrics-port", port)
        self.metrics: Metrics = params.get("metrics") or default_metrics()
        injected = params.get("backend")
        self._owns_backend = injected is None
        self._backend: PubSubBackend | None = injected
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop_requested: asyncio.Event | None = None
        self._metrics_server: Any = None
        self._started = False
        self._stopping = False
        self._stopped = False

    # -- flags ----------------------------------------------------------------

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        """The pub/sub flags and the flags every processor has."""
        add_pubsub_args(parser)
        parser.add_argument(
            "--id", default=env_default("PROCESSOR_ID", cls.default_ident),
            help=f"this processor's identity (env PROCESSOR_ID, default {cls.default_ident})",
        )
        parser.add_argument(
            "--concurrency", type=int, default=env_default("CONCURRENCY", cls.default_concurrency),
            help=f"handlers run at once per consumer (env CONCURRENCY, default {cls.default_concurrency})",
        )
        parser.add_argument(
            "--drain-timeout", type=float,
            default=env_default("DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT),
            help="seconds a stopping processor lets in-flight handlers finish; the rest "
            "are cut short and their messages redelivered "
            f"(env DRAIN_TIMEOUT, default {DEFAULT_DRAIN_TIMEOUT:g})",
        )
        parser.add_argument(
            "--metrics-port", type=int, default=env_default("METRICS_PORT"),
            help="serve Prometheus metrics on this port (env METRICS_PORT; default off)",
        )
        parser.add_argument(
            "--log-level", default=env_default("LOG_LEVEL", "INFO"), type=str.upper,
            choices=LOG_LEVELS, help="log level (env LOG_LEVEL, default INFO)",
        )

    # -- lifecycle --------------------------------------------------------------

    @property
    def backend(self) -> PubSubBackend:
        """The backend; made by ``start``."""
        if self._backend is None:
            raise ConfigurationError(f"processor {self.id!r} is not started; call start() first")
        return self._backend

    @property
    def running(self) -> bool:
        return self._started and not self._stopping

    async def on_start(self) -> None:
        """Open consumers, clients, supervised tasks.  The backend is ready."""

    async def on_stop(self) -> None:
        """Stop consumers (draining in-flight work) and close clients."""

    async def start(self) -> None:
        """Make the backend, serve metrics, then ``on_start``.  A failure undoes it all."""
        if self._started:
            return
        if self._stopped:
            raise ConfigurationError(f"processor {self.id!r} was stopped; make a new one")
        self._stop_requested = asyncio.Event()
        if self._backend is None:
            self._backend = get_pubsub(**self.params)
        self._started = True
        try:
            self._serve_metrics()
            await self.on_start()
        except BaseException:
            await self.stop()
            raise
        log.info("%s %r started on the %s backend", type(self).__name__, self.id,
                 getattr(self._backend, "name", "?"))

    def _serve_metrics(self) -> None:
        if self.metrics_port is None:
            return
        try:
            import prometheus_client
        except ImportError as exc:
            raise ConfigurationError(
                "--metrics-port needs prometheus-client: pip install trustgraph-pubsub[metrics]"
            ) from exc
        registry = self.metrics.registry or prometheus_client.REGISTRY
        try:
            self._metrics_server = prometheus_client.start_http_server(
                self.metrics_port, registry=registry
            )
        except OSError as exc:
            raise ConfigurationError(
                f"--metrics-port {self.metrics_port}: cannot listen ({exc})"
            ) from exc

    async def stop(self) -> None:
        """``on_stop``, cancel supervised tasks, close an owned backend.  Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        if self._stop_requested is not None:
            self._stop_requested.set()
        try:
            if self._started:
                try:
                    await self.on_stop()
                except Exception:
                    log.exception("%s %r: error while stopping", type(self).__name__, self.id)
            await _cancel_all(list(self._tasks.values()), self.id)
            self._tasks.clear()
            if self._metrics_server is not None:
                server = self._metrics_server[0] if isinstance(self._metrics_server, tuple) \
                    else self._metrics_server
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(server.shutdown)
                self._metrics_server = None
        finally:
            if self._owns_backend and self._backend is not None:
                try:
                    await self._backend.close()
                except Exception as exc:
                    log.warning("closing the backend of %r: %s", self.id, exc)
            self._stopped = True
            log.info("%s %r stopped", type(self).__name__, self.id)

    def request_stop(self) -> None:
        """Ask ``run`` to stop (safe from a signal handler on the loop)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run(self) -> None:
        """Start, wait until ``request_stop``, stop.  Cancelling ``run`` stops too."""
        await self.start()
        assert self._stop_requested is not None
        try:
            await self._stop_requested.wait()
        finally:
            await asyncio.shield(self.stop())


    # -- supervision -------------------------------------------------------------

    def supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``factory()`` until the processor stops, restarting it when it fails."""
        if name in self._tasks and not self._tasks[name].done():
            raise ConfigurationError(f"processor {self.id!r} already supervises {name!r}")
        task = asyncio.create_task(self._supervised(name, factory), name=f"{self.id}:{name}")
        self._tasks[name] = task
        return task

    async def _supervised(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(base=0.5, cap=30.0)
        while not self._stopping:
            began = time.monotonic()
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping:
                    return
                log.exception("%r: task %s failed; restarting it", self.id, name)
            else:
                if self._stopping:
                    return
                log.warning("%r: task %s ended while the processor runs; restarting it",
                            self.id, name)
            if time.monotonic() - began > HEALTHY_AFTER:
                backoff.reset()
            await backoff.sleep()

    # -- the console script ------------------------------------------------------

    @classmethod
    def parse(cls, ident: str, doc: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
        """The processor's parameters from ``argv`` (default ``sys.argv[1:]``) and the env."""
        parser = argparse.ArgumentParser(prog=ident, description=doc)
        cls.add_args(parser)
        parser.set_defaults(id=env_default("PROCESSOR_ID", ident))
        return vars(parser.parse_args(argv))

    @classmethod
    def launch(cls, ident: str, doc: str, argv: Sequence[str] | None = None) -> None:
        """Parse flags, run until SIGTERM/SIGINT, exit 0 (1 if it could not start)."""
        params = cls.parse(ident, doc, argv)
        logging.basicConfig(level=params.get("log_level") or "INFO", format=LOG_FORMAT)
        code = asyncio.run(cls._main(params))
        # Everything is closed; skip finalization (see the module docstring).
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    @classmethod
    async def _main(cls, params: Mapping[str, Any]) -> int:
        try:
            proc = cls(**params)
        except Exception as exc:
            log.error("%s: %s", params.get("id"), exc)
            return 1
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        signals = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("%r: %s received; stopping (again to stop at once)", proc.id, sig.name)
                proc.request_stop()
            elif main is not None:
                main.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        try:
            await proc.start()
        except asyncio.CancelledError:
            return 1
        except Exception as exc:
            log.error("%r could not start: %s: %s", proc.id, type(exc).__name__, exc)
            return 1
        try:
            await proc.run()
        except asyncio.CancelledError:
            log.warning("%r: stopped without draining", proc.id)
            return 1
        return 0
