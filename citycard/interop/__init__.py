"""The inter-platform link's asyncio shells (docs/interop.md, "Running the link"): the issuer's
LinkServer, the acquirer's LinkClient per issuer and RemoteDesk, which the gateway's router
hands visitors' taps to. The protocol itself is sans-I/O in protocols/interop_conn.py."""
