"""The control-plane battery, in-process, on the memory backend."""

from tests.services.battery import ControlPlaneBattery


class TestControlPlaneMemory(ControlPlaneBattery):
    broker_name = "memory"
