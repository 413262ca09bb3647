"""The test kit: every helper the suites share, one module per concern.

Test modules and conftest files import helpers from here only; no test module imports
another, and nothing outside tests/ imports from tests/ (tests/unit/test_test_layout.py).
"""
