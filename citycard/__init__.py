"""citycard: transaction platform for a city's citizen card."""

__version__ = "0.1.0"
