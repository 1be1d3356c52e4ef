"""Peers: other Python messaging libraries running the suite's workloads."""
