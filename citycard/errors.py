"""One error root for the whole package (h11-style split of protocol errors)."""


class CityCardError(Exception):
    """Root of every error citycard raises on purpose."""


class ConfigError(CityCardError):
    """A setting is missing or invalid; the message names the key."""


class ProtocolError(CityCardError):
    """The terminal protocol was violated."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class StoreError(CityCardError):
    """The durable store failed; in-flight work was not committed."""


class JournalHeadMoved(StoreError):
    """A shard's journal head is not where its writer left it: another writer (a second
    platform on the same schema) committed to it. Not transient: a defect of the deployment."""
