"""``get_pubsub``, ``add_pubsub_args`` and the backend registry."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_the_kafka_session_timeout_comes_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_options("kafka", {})["session_timeout_ms"] == 6000
    monkeypatch.setenv("KAFKA_SESSION_TIMEOUT_MS", "45000")
    assert get_pubsub(pubsub_backend="kafka").session_timeout_ms == 45000  # type: ignore[attr-defined]
    for bad in ("1000", "soon"):
        monkeypatch.setenv("KAFKA_SESSION_TIMEOUT_MS", bad)
        with pytest.raises(ConfigurationError, match="--kafka-session-timeout-ms"):
            get_pubsub(pubsub_backend="kafka")


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


# -- every option: a clear error, never a secret --------------------------------

SECRET = "S3cr3tPa55"


@pytest.mark.parametrize("config", [
    {"pubsub_backend": "pulsar", "pulsar_host": f"pulsar://admin:{SECRET}@host:6650"},
    {"pubsub_backend": "pulsar", "pulsar_host": f"pulsar://admin:{SECRET}@[host:6650"},
    {"pubsub_backend": "pulsar", "pulsar_host": f"admin:{SECRET}@host:6650"},
    {"pubsub_backend": "pulsar", "pulsar_host": f"http://admin:{SECRET}@host:6650"},
    {"pubsub_backend": "pulsar", "pulsar_admin_url": f"ftp://admin:{SECRET}@host"},
    {"pubsub_backend": "rabbitmq", "rabbitmq_host": f"amqp://guest:{SECRET}@host:5672"},
    {"pubsub_backend": "kafka", "kafka_bootstrap_servers": f"user:{SECRET}@host:9092"},
    {"pubsub_backend": "kafka", "kafka_bootstrap_servers": f"h:1,user:{SECRET}@host:x"},
    {"pubsub_backend": "mqtt", "mqtt_host": f"mqtt://user:{SECRET}@host"},
])
def test_a_password_in_an_address_never_reaches_the_error(config: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(**config)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    flag = "--" + next(k for k in config if k != "pubsub_backend").replace("_", "-")
    assert flag in str(info.value)


def test_a_secret_option_with_a_bad_value_is_not_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "BACKEND_OPTIONS", {
        **factory.BACKEND_OPTIONS,
        "rabbitmq": tuple(
            factory.Option(o.name, o.env, o.default, int, o.help, o.secret)
            if o.name == "password" else o for o in factory.BACKEND_OPTIONS["rabbitmq"]),
    })
    with pytest.raises(ConfigurationError) as info:
        get_pubsub(pubsub_backend="rabbitmq", rabbitmq_password=SECRET)
    assert "--rabbitmq-password" in str(info.value) and SECRET not in str(info.value)


@given(st.sampled_from(["kafka", "pulsar", "rabbitmq", "mqtt"]), st.data())
@settings(max_examples=400, deadline=None)
def test_any_option_value_gives_a_backend_or_a_configuration_error(backend: str, data: st.DataObject) -> None:
    """Odd values (huge, infinite, NaN, long strings, wrong types) never escape as bare errors."""
    opts = factory.BACKEND_OPTIONS[backend]
    opt = data.draw(st.sampled_from(opts))
    value = data.draw(st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.text(max_size=300),
        st.text(min_size=5000, max_size=6000, alphabet="X"),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    ))
    flag = f"--{backend}-{opt.name.replace('_', '-')}"
    try:
        get_pubsub(pubsub_backend=backend, **{f"{backend}_{opt.name}": value})
    except ConfigurationError as exc:
        text = str(exc)
        assert flag in text, text
        assert len(text) < 600, f"{flag}: the error quotes too much ({len(text)} chars)"
        if opt.secret and isinstance(value, str) and len(value) > 3:
            assert value not in text
