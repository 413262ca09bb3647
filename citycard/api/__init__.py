"""Card services over HTTP (FastAPI): holders, cards, money, PINs, disbursements, self-service."""
