"""The raw broker clients, written the idiomatic fast way, apart from the SDK.

Each module has a ``Raw`` class with the workloads of ``benchmarks.workloads``;
names come from ``trustgraph_pubsub.naming`` only so that raw and SDK meet
the same native topics and subscriptions.
"""
