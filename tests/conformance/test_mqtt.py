from tests.conformance.battery import Battery


class TestMQTT(Battery):
    broker_name = "mqtt"
