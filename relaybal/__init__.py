"""relaybal: a Twisted-based SMTP relay balancer."""

__version__ = "0.1.0"
