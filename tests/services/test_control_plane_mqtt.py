"""The control-plane battery, in-process, on the mqtt backend."""

from tests.services.battery import ControlPlaneBattery


class TestControlPlaneMQTT(ControlPlaneBattery):
    broker_name = "mqtt"
    dispatch_honours_prefetch = False
