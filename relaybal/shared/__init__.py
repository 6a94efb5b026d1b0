"""State shared by several relaybal processes through Redis (``[global] shared_state``).

- :mod:`relaybal.shared.redis`: the connection, bounded by ``timeout``, with the
  node-local fallback, outage logging and counters;
- :mod:`relaybal.shared.stick`: stick tables (``stick on src``) with Redis TTLs;
- :mod:`relaybal.shared.buckets`: the ``ratelimit`` policy's token buckets, one
  atomic Lua script per check;
- :mod:`relaybal.shared.state`: the process's link and tables, built by the service;
- :mod:`relaybal.shared.metrics`: ``relaybal_shared_state_*`` in ``/metrics``.

``docs/scaling.rst`` explains what is shared and what is not.
"""
