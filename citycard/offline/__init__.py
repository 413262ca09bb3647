"""The host side of the city-pass's offline records: uploads journaled (desk.py), off the
gateway's tap path; the gateway hands uploads over through ``GatewayContext.offline``."""
