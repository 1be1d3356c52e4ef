"""The conformance battery: one base class (``battery.Battery``), one small module per backend.

A backend's module is three lines::

    from tests.conformance.battery import Battery

    class TestMemory(Battery):
        broker_name = "memory"
"""
