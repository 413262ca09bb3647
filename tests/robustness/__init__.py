"""Robustness, security and overload tests against a live gateway (issue 6).

Their harness (``LiveCity``, ``Canary``, ``RawConn``, the documented error codes) is in
tests/support/live.py and tests/support/terminal.py.
"""
