"""Balance algorithms and the backend that uses them.

One module per algorithm, like HAProxy's ``lb_*.c``; :data:`ALGORITHMS` maps the
configuration name (``backend.NAME.balance``) to a factory.
"""
