"""Seeded deterministic simulation of the tap path (issue 6), in the spirit of TigerBeetle's VOPR.

The product's own code runs here, not copies: AccountShardCore (ledger, journal writer, group
commit, recovery's Rebuild, snapshots, card-service op lookups), TerminalSessionCore, the
gateway's Router, SessionReporter and TerminalProtocol over the sans-I/O ServerConnection, and
the ShardClient for card services.
They run on an asyncio loop with a fake clock (loop.py), over a faulty in-memory network, a
store that fails, delays and fails ambiguously (store.py), and processes that die (shard
actors, the gateway). A reference model audits every commit and every answer. One seed
decides everything, so a seed alone replays a failure: ``python -m tests.sim.run --seed N``.

What is simulated around the product: Ray (actor handles, restarts, calls failing when an
actor dies), Postgres (the stores; their SQL is covered by tests/integration), the network
and the terminals.
"""
