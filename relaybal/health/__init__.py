"""Server health: the rise/fall state machine (:mod:`.state`) and the active probes (:mod:`.checks`).

The state machine is plain logic with no reactor; the probes are thin Twisted
protocols that turn one conversation with a server into a
:class:`~relaybal.health.state.CheckResult`.
"""
