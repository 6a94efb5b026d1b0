"""Delivery of spooled mail to the gateway MTAs: the outbound SMTP client (``client``)."""
