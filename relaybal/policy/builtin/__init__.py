"""The built-in relay policies; each module has its plugin object (``PLUGIN``).

Their names are part of the configuration contract: ``networks``, ``auth``,
``sender-domains``, ``recipient-domains``, ``max-recipients``, ``ratelimit``,
``policyd``, ``dnsbl``. ``relaybal/plugins/builtin_policies.py`` exposes them to
``twisted.plugin``.
"""
