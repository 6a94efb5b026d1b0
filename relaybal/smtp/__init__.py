"""relaybal's own SMTP protocol pieces (not ``twisted.mail.smtp``; see docs/design.rst)."""
