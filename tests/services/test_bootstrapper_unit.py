"""The bootstrapper's file handling and initialisers that need no broker."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap.bootstrapper import Bootstrapper, load_initialisers, read_specs_file
from bootstrap.dev import DEFAULT_INITIALISERS
from bootstrap.initialiser import InitContext, InitialiserError
from bootstrap.initialisers import PulsarTopology
from trustgraph_pubsub import ConfigurationError
from trustgraph_pubsub.backends.memory import MemoryBackend, MemoryHub

COUNTING = "tests.services.initialisers.Counting"


def test_the_bundled_file_loads() -> None:
    specs = load_initialisers(read_specs_file(DEFAULT_INITIALISERS), base=DEFAULT_INITIALISERS.parent)
    assert [s.name for s in specs] == ["queues", "template", "workspace-default", "default-flow"]


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ({"x": 1}, "a list"),
        ([{"class": COUNTING, "flag": "v1"}], "initialisers[0]: missing name"),
        ([{"class": COUNTING, "name": "a", "flag": "v1"},
          {"class": COUNTING, "name": "a", "flag": "v1"}], "initialisers[1] ('a'): duplicate name"),
        ([{"class": "no.such.Module", "name": "n", "flag": "v1"}], "('n'): class 'no.such.Module' not found"),
        ([{"class": "json.dumps", "name": "n", "flag": "v1"}], "not an Initialiser"),
        ([{"class": "tests.services.initialisers.Picky", "name": "p", "flag": "1",
           "params": {"ok": False}}], "('p'): tests.services.initialisers.Picky refused its params"),
        ([{"class": COUNTING, "name": "n", "flag": "1", "params": {"nope": 1}}], "refused its params"),
        ([{"class": COUNTING, "name": "n", "flag": "1", "extra": 1}], "unknown key(s) extra"),
        ([{"class": "bootstrap.initialisers.TemplateSeed", "name": "t", "flag": "1",
           "params": {"config_file": "/nonexistent.json"}}], "no such file"),
    ],
)
def test_a_bad_file_is_refused_naming_the_entry(entries: Any, words: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_initialisers(entries)
    assert words in str(err.value)


def test_files_in_yaml_and_json(tmp_path: Path) -> None:
    entry = {"class": COUNTING, "name": "n", "flag": "v1", "params": {"label": "x"}}
    (tmp_path / "i.json").write_text(json.dumps({"initialisers": [entry]}))
    (tmp_path / "i.yaml").write_text(
        "initialisers:\n  - class: " + COUNTING + "\n    name: n\n    flag: v1\n"
    )
    (tmp_path / "bad.yaml").write_text("initialisers: [unclosed\n")
    assert load_initialisers(read_specs_file(tmp_path / "i.json"))[0].name == "n"
    assert load_initialisers(read_specs_file(tmp_path / "i.yaml"))[0].flag == "v1"
    with pytest.raises(ConfigurationError, match="does not parse"):
        read_specs_file(tmp_path / "bad.yaml")
    with pytest.raises(ConfigurationError, match="No such file"):
        read_specs_file(tmp_path / "missing.yaml")


def test_the_console_script_refuses_a_bad_file_and_exits_1(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "i.yaml").write_text("initialisers:\n  - name: x\n    flag: v1\n")
    out = subprocess.run(
        [sys.executable, "-c", "from bootstrap.bootstrapper import main; main()",
         "--pubsub-backend", "memory", "-c", str(tmp_path / "i.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert "initialisers[0] ('x'): missing class" in out.stderr


class _Admin(http.server.BaseHTTPRequestHandler):
    calls: list[tuple[str, str, Any]] = []

    def _answer(self, status: int, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.calls.append(("GET", self.path, None))
        self._answer(200, ["standalone"]) if self.path == "/admin/v2/clusters" else self._answer(404)

    def do_PUT(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        self.calls.append(("PUT", self.path, body))
        self._answer(409 if self.path.endswith("/config") else 204)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[str]:
    """A stand-in for Pulsar's admin REST API (pulsar-lite has none: quirk no-admin-api)."""
    _Admin.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _ctx(settings: dict[str, Any] | None = None) -> InitContext:
    import logging

    return InitContext("pulsar", logging.LoggerAdapter(logging.getLogger("t"), {}),
                       MemoryBackend(hub=MemoryHub()), None, None, settings or {})  # type: ignore[arg-type]


async def test_pulsar_topology_creates_the_tenant_and_namespaces(admin: str) -> None:
    await PulsarTopology(admin_url=admin, tenant="tg", namespaces=["flow", "config"]).run(
        _ctx(), None, "v1")
    assert _Admin.calls == [
        ("GET", "/admin/v2/clusters", None),
        ("PUT", "/admin/v2/tenants/tg", {"adminRoles": [], "allowedClusters": ["standalone"]}),
        ("PUT", "/admin/v2/namespaces/tg/flow", None),
        ("PUT", "/admin/v2/namespaces/tg/config", None),  # 409: exists, which is fine
    ]
    assert not PulsarTopology.wait_for_services


async def test_pulsar_topology_says_clearly_when_the_admin_api_does_not_answer() -> None:
    from tests.brokers import refused_port

    url = f"http://admin:s3cret@127.0.0.1:{refused_port()}"
    with pytest.raises(InitialiserError) as err:
        await PulsarTopology(timeout=2).run(_ctx({"pulsar_admin_url": url}), None, "v1")
    text = str(err.value)
    assert "does not answer" in text and "127.0.0.1" in text and "s3cret" not in text
    with pytest.raises(InitialiserError, match="no Pulsar admin URL"):
        await PulsarTopology().run(_ctx(), None, "v1")


async def test_the_http_calls_stay_off_the_event_loop(admin: str) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    t = asyncio.create_task(ticker())
    await PulsarTopology(admin_url=admin).run(_ctx(), None, "v1")
    stop.set()
    await t
    assert ticks > 1


def test_bootstrapper_needs_initialisers() -> None:
    with pytest.raises(ConfigurationError, match="initialisers-file"):
        Bootstrapper(backend=MemoryBackend(hub=MemoryHub()))
