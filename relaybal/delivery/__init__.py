"""Delivery of spooled mail to the gateway MTAs: the outbound SMTP client, gateway pools, the scheduler."""
