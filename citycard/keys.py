"""Redis key and channel names, shared by their writers (persistence/) and their readers (the
gateway): one place, so both sides always name the same key."""


def hotlist_keys(prefix: str) -> tuple[str, str, str]:
    """The hotlist's set of card numbers, its version, and its change channel."""
    return f"{prefix}:hotlist", f"{prefix}:hotlist:version", f"{prefix}:hotlist:events"


def disabled_terminals_channel(prefix: str) -> str:
    """Where ``citycard terminal disable`` announces a terminal to cut off."""
    return f"{prefix}:terminals:disabled"
