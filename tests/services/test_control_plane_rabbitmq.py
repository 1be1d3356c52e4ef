"""The control-plane battery, in-process, on the rabbitmq backend."""

from tests.services.battery import ControlPlaneBattery


class TestControlPlaneRabbitMQ(ControlPlaneBattery):
    broker_name = "rabbitmq"
