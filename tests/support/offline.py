"""Offline records as a card and its validator's SAM would make them, with the demo keys of
citycard/config/default.toml [card]: the TAC by the issuer's TAC key, the batch MAC by the
terminal's batch key."""

from collections.abc import Sequence
from dataclasses import replace

from citycard.config.settings import Settings
from citycard.domain import epurse_crypto
from citycard.domain.epurse_crypto import LoadInput, When, load_mac1, load_mac2, load_session_key
from citycard.domain.offline import (
    IssuerKeys,
    OfflineRecord,
    batch_key,
    batch_mac,
    expected_tac,
    terminal_id_bytes,
)
from citycard.offline.desk import issuer_keys

WHEN = When.of("20261206", "081500")


class Sam:
    """A validator's signing half, for one terminal."""

    def __init__(self, settings: Settings, terminal_id: int) -> None:
        self.terminal_id = terminal_id
        self.issuer: IssuerKeys = issuer_keys(settings)
        self.key = batch_key(bytes.fromhex(settings.card.batch_master_key_hex), terminal_id)

    def record(self, card_no: int, counter: int, amount_fen: int, balance_after_fen: int, seq: int = 0,
               forged: bool = False) -> OfflineRecord:
        r = OfflineRecord(card_no, counter, amount_fen, balance_after_fen, 0x06, self.terminal_id,
                          seq or 1000 + counter, WHEN, bytes(4), 1, 12)
        return replace(r, tac=b"\xde\xad\xbe\xef" if forged else expected_tac(self.issuer.dtk(card_no), r))

    def mac(self, batch_seq: int, records: Sequence[OfflineRecord]) -> bytes:
        return batch_mac(self.key, self.terminal_id, batch_seq, records)


class LoadCard:
    """A card's answers to INITIALIZE FOR LOAD, with its own load key (the host's DLK for it)."""

    def __init__(self, settings: Settings, card_no: int) -> None:
        self.keys = issuer_keys(settings).for_card(card_no)
        self.card_no = card_no

    def init(self, amount_fen: int, terminal_id: int, balance_fen: int, online_counter: int,
             random4: bytes) -> dict[str, object]:
        """The body fields a counter terminal sends from the card's answer."""
        ld = LoadInput(amount_fen, balance_fen, terminal_id_bytes(terminal_id), WHEN, random4, online_counter)
        mac1 = load_mac1(load_session_key(self.keys.dlk, random4, online_counter), ld)
        return {"card_balance_fen": balance_fen, "card_online_counter": online_counter,
                "card_random": random4.hex(), "card_mac1": mac1.hex()}

    def mac2_ok(self, answer: dict[str, object], amount_fen: int, terminal_id: int, balance_fen: int,
                online_counter: int, random4: bytes) -> bool:
        """Whether the host's MAC2 is what this card checks in CREDIT FOR LOAD."""
        when = When.of(str(answer["host_date"]), str(answer["host_time"]))
        ld = LoadInput(amount_fen, balance_fen, terminal_id_bytes(terminal_id), when, random4, online_counter)
        return load_mac2(load_session_key(self.keys.dlk, random4, online_counter), ld).hex() == answer["mac2"]

    def load_tac(self, answer: dict[str, object], amount_fen: int, terminal_id: int, balance_fen: int,
                 online_counter: int) -> bytes | None:
        """The card's TAC of a load credited with this MAC2 answer; None where epurse_crypto has
        no load_tac (the host then records the TAC unverified)."""
        fn = getattr(epurse_crypto, "load_tac", None)
        if fn is None:
            return None
        when = When.of(str(answer["host_date"]), str(answer["host_time"]))
        ld = LoadInput(amount_fen, balance_fen, terminal_id_bytes(terminal_id), when, bytes(4), online_counter)
        return bytes(fn(self.keys.dtk, ld))
