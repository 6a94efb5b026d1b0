"""An example relaybal relay policy: only senders in an allow-list file may send."""

from relaybal_policy_example.policy import PLUGIN, AllowList, SenderAllowListPolicy, Settings, read_options

__all__ = ["PLUGIN", "AllowList", "SenderAllowListPolicy", "Settings", "read_options"]
