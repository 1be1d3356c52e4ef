"""The conformance battery against the Kafka backend (tansu, or TG_KAFKA_BOOTSTRAP)."""

from tests.conformance.battery import Battery


class TestKafka(Battery):
    broker_name = "kafka"
