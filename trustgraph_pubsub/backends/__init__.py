"""The backends, one package per broker, laid out alike.

Each broker package (``pulsar``, ``kafka``, ``rabbitmq``, ``mqtt``) has the
same modules for the same jobs: ``__init__`` (the backend class, its
``Capabilities`` and the client internals it relies on), ``config``
(settings and their checks), ``connection`` (connect, reconnect, drive the
client from the loop), ``errors`` (the client's failures mapped onto the
SDK's), ``producer``, ``consumer`` and ``lifecycle`` (queues); a module only
one broker needs says why in its docstring.  ``memory`` is the in-process
broker for unit tests.  Nothing here imports a broker library: a backend
package is imported when ``get_pubsub`` picks it.

The options of every backend stay in one table, ``factory.BACKEND_OPTIONS``,
not in each ``config``: the command line lists every backend's flags, and
``config`` of Pulsar and RabbitMQ imports its client library, which
``--help`` must not need.
"""
