"""Delivery as a use case: claim from the queue, dispatch to lanes, send, record.

- ``policy``: pure decisions around an attempt (OAuth2 waits, pacing).
- ``dispatcher``: lanes per configuration, sessions per lane, pacing on the injected clock.
- ``service``: the claim loop, batched recording, lease renewal, shutdown.
- ``transports``: which ``ports.Transport`` delivers a configuration.
- ``targets``: reading configurations for the lanes.

The queue is a port (``ports.DeliveryQueue``, on the database in ``adapters/db/queue.py``);
what an outcome means for a message is decided in ``domain/messages.py``.
"""
