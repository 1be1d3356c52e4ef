from tests.conformance.battery import Battery


class TestRabbitMQ(Battery):
    broker_name = "rabbitmq"
