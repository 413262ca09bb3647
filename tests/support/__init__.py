"""The test kit: every helper the suites share, one module per concern.

- ``paths``: ROOT of the repository.
- ``services``: ServiceUrls, make_settings, schema and Redis-prefix drops, OwnServices.
- ``city``: a running platform (City, running_city) and its HTTP API (ApiCity, api_city).
- ``cli``: the citycard command in its own process (citycard_env, gateway_port, migrated_city).
- ``clock``, ``waiting``: now_ms; until_available and within.
- ``terminal``: the raw-socket side of the protocol (RawConn, frames, LoadConn, ride).
- ``live``: a live city on its own uvloop thread (LiveCity) and a canary terminal.
- ``chaos_load``: terminals that resend until every tap has a final answer, and its checks.
- ``results``: one recorder of the figures a run measures.
- ``ledger``: views of the pure ledger (card_states).

Test modules and conftest files import helpers from here only; no test module imports
another, and nothing outside tests/ imports from tests/ (tests/unit/test_test_layout.py).
"""
