"""relaybal's built-in relay policies, as ``twisted.plugin`` plugins (see :mod:`relaybal.policy.builtin`)."""

from relaybal.policy.builtin import auth, dnsbl, domains, networks, policyd, ratelimit, recipients

networks_policy = networks.PLUGIN
auth_policy = auth.PLUGIN
sender_domains_policy = domains.SENDER_PLUGIN
recipient_domains_policy = domains.RECIPIENT_PLUGIN
max_recipients_policy = recipients.PLUGIN
ratelimit_policy = ratelimit.PLUGIN
policyd_policy = policyd.PLUGIN
dnsbl_policy = dnsbl.PLUGIN
