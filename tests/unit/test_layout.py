"""The house rules of the source tree (issue 12), checked so they stay true.

- every broker backend is a package with the same modules for the same jobs;
- no module is over 500 lines unless its docstring says why ("500 lines");
- each backend package's docstring lists the client internals it relies on;
- each broker client is bounded in pyproject.toml, and the version CI pins
  (constraints.txt) lies inside the bound.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ROOT / "trustgraph_pubsub" / "backends"
BROKERS = ("pulsar", "kafka", "rabbitmq", "mqtt")
FURNITURE = {"__init__.py", "config.py", "connection.py", "errors.py", "producer.py",
             "consumer.py", "lifecycle.py"}
CLIENTS = {"pulsar": "pulsar-client", "kafka": "aiokafka", "rabbitmq": "pika", "mqtt": "paho-mqtt"}


def _modules() -> list[Path]:
    return sorted(p for pkg in ("trustgraph_pubsub", "trustgraph_schema")
                  for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("broker", BROKERS)
def test_backends_have_the_same_furniture(broker: str) -> None:
    package = BACKENDS / broker
    assert package.is_dir(), f"backends/{broker} should be a package"
    have = {p.name for p in package.glob("*.py")}
    assert FURNITURE <= have, f"backends/{broker} lacks {sorted(FURNITURE - have)}"
    for extra in sorted(have - FURNITURE):  # broker-only modules say why they exist
        doc = ast.get_docstring(ast.parse((package / extra).read_text())) or ""
        assert doc, f"backends/{broker}/{extra} has no docstring"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small_or_say_why(path: Path) -> None:
    text = path.read_text()
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert doc, f"{path.relative_to(ROOT)} has no module docstring saying its job"
    lines = text.count("\n")
    assert lines <= 500 or "500 lines" in doc, (
        f"{path.relative_to(ROOT)} has {lines} lines and its docstring does not say why"
    )


@pytest.mark.parametrize("broker", BROKERS)
def test_client_internals_are_listed_and_bounded(broker: str) -> None:
    doc = ast.get_docstring(ast.parse((BACKENDS / broker / "__init__.py").read_text())) or ""
    client = CLIENTS[broker]
    assert f"Private internals of {client} relied on" in doc

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [s for group in project["optional-dependencies"].values() for s in group
             if re.match(rf"{re.escape(client)}\b", s)]
    assert specs, f"{client} is not in any extra"
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split()
                if "==" in line)
    pinned = tuple(int(x) for x in pins[client].split(".")[:2])
    for spec in specs:
        low = re.search(r">=([\d.]+)", spec)
        high = re.search(r"<([\d.]+)", spec)
        assert low and high, f"{spec!r}: the client must be bounded on both sides"
        lo = tuple(int(x) for x in low.group(1).split(".")[:2])
        hi = tuple(int(x) for x in high.group(1).split(".")[:2])
        assert lo <= pinned < hi, f"{spec!r} does not admit the tested {client}=={pins[client]}"
        assert lo == pinned, f"{spec!r} admits versions older than the tested {pins[client]}"
