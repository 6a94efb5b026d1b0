"""twistd plugin: ``twistd -n relaybal -c FILE``.

Points at :mod:`relaybal.tap` by name so ``twistd --help`` imports nothing heavy.
"""

from twisted.application.service import ServiceMaker

relaybal = ServiceMaker(
    "relaybal",
    "relaybal.tap",
    "SMTP relay balancer: layer-4 splice and message-level relay",
    "relaybal",
)
