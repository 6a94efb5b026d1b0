"""Relay mode: relaybal accepts mail itself (the receiving side, and later the spool and delivery).

The public faces are in :mod:`relaybal.relay.interfaces` (what a message sink
and a session policy must do) and :mod:`relaybal.relay.memory` (an in-memory
sink for tests and for the daemon until the spool exists).
"""
