"""Example flow processors, small and real, that the tests and the demo drive end to end."""
