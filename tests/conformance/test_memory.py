"""The conformance battery against the memory backend (one in-process MemoryHub)."""

from tests.conformance.battery import Battery


class TestMemory(Battery):
    broker_name = "memory"
