"""Redis key and channel names, shared by their writers (persistence/) and their readers (the
gateway): one place, so both sides always name the same key."""


def hotlist_keys(prefix: str) -> tuple[str, str, str]:
    """The hotlist's set of card numbers, its version, and its change channel."""
    return f"{prefix}:hotlist", f"{prefix}:hotlist:version", f"{prefix}:hotlist:events"


def disabled_terminals_channel(prefix: str) -> str:
    """Where ``citycard terminal disable`` announces a terminal to cut off."""
    return f"{prefix}:terminals:disabled"


def self_session_key(prefix: str, token_sha256_hex: str) -> str:
    """A self-service session (its token's hash): the card number, expiring with the session."""
    return f"{prefix}:self:session:{token_sha256_hex}"


def self_sessions_of_card(prefix: str, card_no: int) -> str:
    """The session keys of one card, so a counter PIN reset can end them all."""
    return f"{prefix}:self:card:{card_no}"
