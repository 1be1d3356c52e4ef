"""The contenders of the benchmark suite: the SDK, the raw clients, FastStream.

``load(name, broker, config)`` builds one; which exist per broker is
``CONTENDERS``.  The raw clients live apart in ``benchmarks/raw/`` and the
peer in ``benchmarks/peers/``, so the SDK's code and theirs never mix.
"""

from __future__ import annotations

import importlib
from typing import Any

CONTENDERS: dict[str, tuple[str, ...]] = {
    "pulsar": ("raw", "sdk"),
    "kafka": ("raw", "sdk", "faststream"),
    "rabbitmq": ("raw", "sdk", "faststream"),
    "mqtt": ("raw", "sdk", "faststream"),
    "memory": ("sdk",),
}

_WHERE = {
    "sdk": "benchmarks.contenders.sdk:Sdk",
    "raw": "benchmarks.raw.{broker}:Raw",
    "faststream": "benchmarks.peers.faststream:FastStream",
}


def load(name: str, broker: str, config: dict[str, Any]) -> Any:
    """A contender, with ``broker``, ``config`` and ``name`` set for ``run_pacer``."""
    module, _, cls = _WHERE[name].format(broker=broker).partition(":")
    contender = getattr(importlib.import_module(module), cls)(broker, config)
    contender.broker, contender.config, contender.name = broker, config, name
    return contender
