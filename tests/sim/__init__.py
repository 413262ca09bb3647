"""Seeded deterministic simulation of the tap path (issue 6), in the spirit of TigerBeetle's VOPR.

The real ledger, fare tables, sans-I/O server connection and wire messages run inside a
discrete-event world with a fake clock, a faulty in-memory network, a store that can fail and
shards that crash. A reference model audits every commit and every answer. One seed decides
everything, so a seed alone replays a failure: ``python -m tests.sim.run --seed N``.
"""
