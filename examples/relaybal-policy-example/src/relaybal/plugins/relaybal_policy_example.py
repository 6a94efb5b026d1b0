# The plugin's "dropin": twisted.plugin finds every IPlugin provider at module level here.
# Keep this module tiny: relaybal imports it (and every other module in relaybal/plugins)
# to find the plugins by name.
from relaybal_policy_example import PLUGIN

sender_allowlist = PLUGIN
