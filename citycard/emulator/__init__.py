"""The city-pass card emulator: the pure card (protocols/epurse_card.py) behind vsmartcard's
vpcd link, with its state in a file (docs/card.md, "The emulator")."""
