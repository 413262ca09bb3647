"""Offline records as a card and its validator's SAM would make them, with the demo keys of
citycard/config/default.toml [card]: the TAC by the issuer's TAC key, the batch MAC by the
terminal's batch key."""

from collections.abc import Sequence
from dataclasses import replace

from citycard.config.settings import Settings
from citycard.domain.epurse_crypto import When
from citycard.domain.offline import IssuerKeys, OfflineRecord, batch_key, batch_mac, expected_tac
from citycard.gateway.offline import issuer_keys

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
