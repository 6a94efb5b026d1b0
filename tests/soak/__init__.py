"""Shared pieces of the reliability suites (``tests/test_reliability_*.py``) and ``make soak``."""
