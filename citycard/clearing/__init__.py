"""The regional clearing house as a process of its own (issue 15 item 3): the pure core of
domain/clearing.py made durable by events in its own Postgres schema, behind an HTTP API."""
