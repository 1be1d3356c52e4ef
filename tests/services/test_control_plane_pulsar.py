"""The control-plane battery, in-process, on the pulsar backend."""

from tests.services.battery import ControlPlaneBattery


class TestControlPlanePulsar(ControlPlaneBattery):
    broker_name = "pulsar"
