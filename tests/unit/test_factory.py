"""``get_pubsub``, ``add_pubsub_args`` and the backend registry."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from trustgraph_pubsub import ConfigurationError, available_backends, factory, get_pubsub
from trustgraph_pubsub.backends.memory import MemoryBackend
from trustgraph_pubsub.factory import Option, add_pubsub_args, register_backend, resolve_options


def test_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(pubsub_backend="nope")
    text = str(info.value)
    assert "'nope'" in text
    for name in ("kafka", "memory", "mqtt", "pulsar", "rabbitmq"):
        assert name in text


def test_backend_name_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError, match="string"):
        get_pubsub(pubsub_backend=3)


def test_pubsub_backend_env_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_BACKEND", "memory")
    assert isinstance(get_pubsub(), MemoryBackend)


def test_option_precedence_argument_env_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULSAR_HOST", raising=False)
    assert resolve_options("pulsar", {})["host"] == "pulsar://localhost:6650"
    monkeypatch.setenv("PULSAR_HOST", "pulsar://env:6650")
    assert resolve_options("pulsar", {})["host"] == "pulsar://env:6650"
    assert resolve_options("pulsar", {"pulsar_host": "pulsar://arg:6650"})["host"] == "pulsar://arg:6650"
    # Another backend's keys are ignored.
    assert "host" not in resolve_options("memory", {"pulsar_host": "x"})


def test_env_values_are_coerced_and_bad_ones_name_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_PORT", "5673")
    assert resolve_options("rabbitmq", {})["port"] == 5673
    monkeypatch.setenv("RABBITMQ_PORT", "fifty")
    with pytest.raises(ConfigurationError, match="--rabbitmq-port must be int"):
        resolve_options("rabbitmq", {})


def test_add_pubsub_args_then_get_pubsub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_BACKEND", raising=False)
    parser = argparse.ArgumentParser()
    add_pubsub_args(parser)
    args = parser.parse_args(["--pubsub-backend", "memory", "--pulsar-host", "pulsar://x:1"])
    assert args.pulsar_host == "pulsar://x:1"
    assert args.rabbitmq_port is None  # the environment and defaults apply in get_pubsub
    assert isinstance(get_pubsub(**vars(args)), MemoryBackend)


def test_secrets_stay_out_of_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_PASSWORD", "env-secret-value")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "another-secret")
    parser = argparse.ArgumentParser()
    add_pubsub_args(parser)
    text = parser.format_help()
    assert "env-secret-value" not in text and "another-secret" not in text
    password_help = next(a.help for a in parser._actions if a.dest == "rabbitmq_password")
    assert password_help is not None
    assert "(hidden)" in password_help and "guest" not in password_help


class PluginBackend(MemoryBackend):
    """A third-party backend: the memory backend plus one option of its own."""

    name = "plugin"
    options = (Option("region", "PLUGIN_REGION", "eu", help="where it lives"),)

    def __init__(self, region: str) -> None:
        super().__init__()
        self.region = region


@pytest.fixture
def plugin() -> Iterator[str]:
    name = "plugin-test"
    register_backend(name, PluginBackend)
    yield name
    factory._registered.pop(name, None)
    factory.BACKEND_OPTIONS.pop(name, None)


def test_third_party_backend(plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert plugin in available_backends()
    monkeypatch.delenv("PLUGIN_REGION", raising=False)
    b = get_pubsub(pubsub_backend=plugin)
    assert isinstance(b, PluginBackend) and b.region == "eu"
    monkeypatch.setenv("PLUGIN_REGION", "us")
    assert get_pubsub(pubsub_backend=plugin).region == "us"  # type: ignore[attr-defined]
    parser = argparse.ArgumentParser()
    add_pubsub_args(parser)
    args = parser.parse_args(["--pubsub-backend", plugin, "--plugin-test-region", "ap"])
    assert get_pubsub(**vars(args)).region == "ap"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=plugin):
        get_pubsub(pubsub_backend="plugin-missing")
