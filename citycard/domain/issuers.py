"""The issuer registry, pure (issue 15 item 2; docs/interop.md, "Participants").

Every city of the region is an *issuer* (its cards, its accounts, its keys) and an *acquirer*
(its buses and shops take the other cities' cards). The registry says, for a card number,
which city issued it, where that city's platform listens for the inter-platform link, the
Ed25519 key it authenticates with there, and how much stand-in risk an acquirer may take on
one of its cards per window.

Card prefixes: a card number is the issuer number, a 10-digit serial and a Luhn digit
(``cards.make_card_no``), and ``cards.issuer_of`` is its prefix, as the fare tables'
``interop.issuers`` already key it. Because the serial and check digit are always 11 digits,
two different issuer numbers never claim the same card (3301 numbers 15-digit cards, 330100
17-digit ones): there is no longest-prefix rule to get wrong, a lookup is one division and
one dict probe, and the only ambiguity, the same number twice, is refused.
"""

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .cards import issuer_of as _prefix_of
from .offline import IssuerKeys

MAX_ISSUERS = 1000
MAX_CARD_PREFIX = 10**7 - 1  # card numbers stay below 10**18 (the wire's bound): 7 digits at most
MAX_NAME_CHARS = 64
MAX_HOST_CHARS = 253  # a DNS name's limit
MAX_FLOOR_LIMIT_FEN = 10_000_000  # 100,000 yuan: far above any sane stand-in limit
LINK_KEY_BYTES = 32  # an Ed25519 public key, raw
CODE_PATTERN = r"^[A-Z][A-Z0-9]{1,7}$"  # "HZ", "SH", "NB2": 2 to 8 capitals and digits
_CODE = re.compile(CODE_PATTERN)
_HOST = re.compile(r"^[A-Za-z0-9._:\[\]-]+$")


def _int_in(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer {low}..{high}, got {value!r}")
    return value


def check_code(name: str, code: object) -> str:
    if not isinstance(code, str) or not _CODE.match(code):
        raise ValueError(f"{name} must be 2 to 8 capitals and digits starting with a capital, got {code!r}")
    return code


@dataclass(frozen=True, slots=True)
class Issuer:
    """One city's platform, as the others know it."""

    code: str  # short city code, e.g. "HZ": the name on the link and in clearing files
    name: str
    card_prefix: int  # cards.issuer_of of its cards, e.g. 330100
    link_host: str
    link_port: int
    link_public_key: bytes  # Ed25519, raw 32 bytes: verifies its link signatures
    floor_limit_fen: int  # stand-in: most an acquirer approves on one of its cards per window
    # Its master keys, to check the TACs of its cards' offline records: held by the issuer
    # itself (and, where it is trusted with them, a clearing house); None elsewhere.
    tac_keys: IssuerKeys | None = None

    def __post_init__(self) -> None:
        check_code("code", self.code)
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= MAX_NAME_CHARS:
            raise ValueError(f"name must be 1..{MAX_NAME_CHARS} characters, got {self.name!r}")
        _int_in("card_prefix", self.card_prefix, 1, MAX_CARD_PREFIX)
        if (not isinstance(self.link_host, str) or not 1 <= len(self.link_host) <= MAX_HOST_CHARS
                or not _HOST.match(self.link_host)):
            raise ValueError(f"link host must be a host name or address, got {self.link_host!r}")
        _int_in("link port", self.link_port, 1, 65535)
        if not isinstance(self.link_public_key, bytes) or len(self.link_public_key) != LINK_KEY_BYTES:
            raise ValueError(f"link_public_key must be {LINK_KEY_BYTES} bytes (raw Ed25519)")
        _int_in("floor_limit_fen", self.floor_limit_fen, 0, MAX_FLOOR_LIMIT_FEN)
        if self.tac_keys is not None and not isinstance(self.tac_keys, IssuerKeys):
            raise ValueError("tac_keys must be IssuerKeys or None")

    @property
    def link_address(self) -> str:
        host = f"[{self.link_host}]" if ":" in self.link_host else self.link_host
        return f"{host}:{self.link_port}"


def parse_link_address(address: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) to (host, port); ValueError saying what is wrong."""
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"link must be host:port, got {address!r}")
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"link port must be 1..65535, got {port!r}")
    if not host:
        raise ValueError(f"link host missing in {address!r}")
    return host, int(port)


class IssuerRegistry:
    """The region's issuers, validated as a whole; ``own`` is the city this platform runs."""

    __slots__ = ("_by_code", "_by_prefix", "_issuers", "own")

    def __init__(self, issuers: Sequence[Issuer], own: str) -> None:
        if not 1 <= len(issuers) <= MAX_ISSUERS:
            raise ValueError(f"issuers: 1..{MAX_ISSUERS} issuers, got {len(issuers)}")
        by_code: dict[str, Issuer] = {}
        by_prefix: dict[int, Issuer] = {}
        keys: dict[bytes, str] = {}
        for i, issuer in enumerate(issuers):
            if not isinstance(issuer, Issuer):
                raise ValueError(f"issuers[{i}] is not an Issuer")
            if issuer.code in by_code:
                raise ValueError(f"issuers[{i}].code: {issuer.code} is listed twice")
            other = by_prefix.get(issuer.card_prefix)
            if other is not None:
                raise ValueError(f"issuers[{i}].card_prefix: {issuer.card_prefix} is already {other.code}'s")
            # One key, one city: a peer proves *which* city it is with its key.
            if issuer.link_public_key in keys:
                raise ValueError(f"issuers[{i}].link_public_key: already {keys[issuer.link_public_key]}'s")
            by_code[issuer.code] = by_prefix[issuer.card_prefix] = issuer
            keys[issuer.link_public_key] = issuer.code
        check_code("own", own)
        if own not in by_code:
            raise ValueError(f"own: {own} is not among the issuers")
        self._issuers = tuple(issuers)
        self._by_code = by_code
        self._by_prefix = by_prefix
        self.own = by_code[own]

    def issuer_of(self, card_no: int) -> Issuer | None:
        """The issuer of ``card_no``, or None if no registered issuer numbers it."""
        if card_no <= 0:
            return None
        return self._by_prefix.get(_prefix_of(card_no))

    def by_code(self, code: str) -> Issuer | None:
        return self._by_code.get(code)

    def is_own(self, card_no: int) -> bool:
        return _prefix_of(card_no) == self.own.card_prefix

    def others(self) -> list[Issuer]:
        return [i for i in self._issuers if i.code != self.own.code]

    def __len__(self) -> int:
        return len(self._issuers)

    def __iter__(self) -> Iterator[Issuer]:
        return iter(self._issuers)


__all__ = ["CODE_PATTERN", "LINK_KEY_BYTES", "MAX_CARD_PREFIX", "MAX_FLOOR_LIMIT_FEN", "MAX_ISSUERS", "Issuer",
           "IssuerRegistry", "check_code", "parse_link_address"]
