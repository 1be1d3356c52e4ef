"""The control-plane battery, in-process, on the kafka backend."""

from tests.services.battery import ControlPlaneBattery


class TestControlPlaneKafka(ControlPlaneBattery):
    broker_name = "kafka"
    dispatch_honours_prefetch = False
