"""Session-wide broker registry: each broker starts once, on first use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.brokers import Broker, BrokerUnavailable, broker_class, require_brokers


class _Registry:
    def __init__(self) -> None:
        self.started: dict[str, Broker] = {}
        self.failed: dict[str, str] = {}

    def get(self, name: str) -> Broker:
        if name in self.failed:
            self._unavailable(name, self.failed[name])
        if name not in self.started:
            broker = broker_class(name)()
            try:
                broker.start()
            except BrokerUnavailable as exc:
                self.failed[name] = str(exc)
                self._unavailable(name, str(exc))
            self.started[name] = broker
        return self.started[name]

    @staticmethod
    def _unavailable(name: str, why: str) -> None:
        if require_brokers():
            pytest.fail(f"{name} broker required (TG_REQUIRE_BROKERS=1) but unavailable: {why}")
        pytest.skip(f"{name} broker unavailable: {why}")

    def stop_all(self) -> None:
        for broker in self.started.values():
            broker.stop()


@pytest.fixture(scope="session")
def broker_registry() -> Iterator[_Registry]:
    registry = _Registry()
    yield registry
    registry.stop_all()


@pytest.fixture
def broker(request: pytest.FixtureRequest, broker_registry: _Registry) -> Broker:
    """The broker named by the test class's ``broker_name``."""
    name = getattr(request.cls, "broker_name", None) or getattr(request, "param", None)
    if name is None:
        raise RuntimeError("test class must set broker_name")
    return broker_registry.get(name)


@pytest.fixture
async def backend(broker: Broker) -> AsyncIterator[Any]:
    """A fresh backend for the test's broker, closed afterwards."""
    b = broker.make_backend()
    try:
        yield b
    finally:
        await b.close()
