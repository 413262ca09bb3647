"""The card services: what a counter clerk, a programme administrator or a holder asks of a
card (top-ups, refunds, balance, history, and in time every other card service).

The rule of the layer: route modules in ``api/`` translate HTTP to these calls and back; this
layer decides; ``persistence/`` holds the SQL; a card's state changes only through its shard
(``ShardClient``). Business refusals are typed errors from ``cards/errors.py``, which the API
maps to its one JSON error shape.
"""
