"""The conformance battery against the Pulsar backend (pulsar-lite, or TG_PULSAR_URL)."""

from tests.conformance.battery import Battery


class TestPulsar(Battery):
    broker_name = "pulsar"
