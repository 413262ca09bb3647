"""Terminal programs' side of the protocol: the asyncio client (``client.py``) over the sans-I/O
``protocols.client.ClientConnection``. Imports nothing of the load lab."""
