"""Pure domain core: money, cards, fares, the ledger state machine.

No asyncio, ray, asyncpg, redis, uvloop, prometheus_client or wall-clock reads here:
time comes in as arguments (``now_ms``).
"""
