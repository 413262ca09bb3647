"""One offline sale at a validator: the APDUs a card in the field goes through, the fare from
the same rules code as the host, the record kept before and after the debit.

The sale talks to the card through ``transmit`` (bytes in, bytes out; reader_pool in the
field, the pure card in unit tests). It returns a ``Sale`` for the display: a business
refusal is a value, never an exception. A broken link (card pulled, reader gone, timeout)
ends the sale; if it broke after DEBIT went out, the record stays *pending* and is settled the
next time that card is presented (GET TRANSACTION PROOF).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date

from ..domain.cards import CardState, CardStatus
from ..domain.epurse_crypto import COMPOUND_PURCHASE, When
from ..domain.results import Result
from ..domain.rules import apply_effects, decide
from ..domain.sam import SamExhausted, SoftSam
from ..domain.tables import FareTables
from ..domain.taps import Tap
from ..errors import CityCardError
from ..protocols import epurse_terminal as t
from ..protocols.apdu import select_by_aid
from ..protocols.card_files import IssuerData, TransitRecord
from ..protocols.epurse_card import CITY_PASS_AID
from .store import Pending, Store, StoreFull

Transmit = Callable[[bytes], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Sale:
    ok: bool
    reason: str  # "" when ok; else what the display says, in words
    card_no: int = 0
    fare_fen: int = 0
    balance_fen: int = -1  # after the sale; -1 unknown
    result: str = ""  # the rules' result name (OK, PASSBACK, INSUFFICIENT_FUNDS, ...) or a card-side reason
    recovered: int = 0  # pending sales of this card settled before this one
    apdus: int = 0

    def display(self) -> str:
        card = f"card {self.card_no}" if self.card_no else "card"
        if self.ok:
            return f"OK {card}: fare {_yuan(self.fare_fen)}, balance {_yuan(self.balance_fen)}"
        balance = f", balance {_yuan(self.balance_fen)}" if self.balance_fen >= 0 else ""
        return f"REFUSED {card}: {self.reason}{balance}"


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d} yuan"


@dataclass
class Validator:
    """What a sale needs from the validator: its SAM, store, fare tables, and where it is."""

    sam: SoftSam
    store: Store
    tables: FareTables
    kind: int  # the tap kind this validator sells (bus, water bus, ...)
    route: int

    async def sell(self, transmit: Transmit, now_ms: int, today: date) -> Sale:
        counter = _Counting(transmit)
        try:
            return await self._sell(counter, now_ms, today)
        except t.CardAnswerError as exc:
            return Sale(False, f"card error: {exc}", result="CARD_ERROR", apdus=counter.n)
        except StoreFull as exc:
            return Sale(False, f"out of service: store full ({exc})", result="STORE_FULL", apdus=counter.n)
        except SamExhausted as exc:
            return Sale(False, f"out of service: {exc}", result="SAM_EXHAUSTED", apdus=counter.n)
        except CityCardError as exc:  # the link broke: card pulled, reader gone, timeout
            name = type(exc).__name__
            what = _LINK_FAULTS.get(name, "card removed too soon")
            return Sale(False, f"{what}: present the card again ({exc})",
                        result="CARD_ERROR" if name == "BadResponse" else "CARD_REMOVED", apdus=counter.n)

    async def _sell(self, io: "_Counting", now_ms: int, today: date) -> Sale:
        sel = t.ok_or_sw(await io(select_by_aid(CITY_PASS_AID).encode()))
        if sel is not None:
            return Sale(False, "not a city-pass card" if sel == 0x6A82 else f"application not usable ({sel:04X})",
                        result="WRONG_APPLICATION", apdus=io.n)
        issuer = IssuerData.decode(t.ok_data(await io(t.read_binary_sfi(t.SFI_ISSUER, 0, IssuerData.LENGTH).encode()),
                                             "READ BINARY 15", IssuerData.LENGTH))
        card_no = issuer.card_no
        if issuer.blocked or self.store.listed(card_no):
            return Sale(False, "card blocked", card_no, result="HOTLISTED", apdus=io.n)
        if not issuer.start <= today <= issuer.expiry:
            return Sale(False, f"card not valid today (valid {issuer.start} to {issuer.expiry})", card_no,
                        result="EXPIRED", apdus=io.n)
        recovered = 0
        for p in self.store.pending_for(card_no):
            recovered += await self._recover(io, p)
        balance = t.parse_balance(await io(t.get_balance().encode()))
        raw = t.ok_data(await io(t.read_record_sfi(t.SFI_CAPP, t.TRANSIT_RECORD, TransitRecord.LENGTH).encode()),
                        "READ RECORD 17", TransitRecord.LENGTH)
        transit = TransitRecord.decode(raw)
        state = CardState(card_no, int(CardStatus.ACTIVE), issuer.category, balance)
        transit.apply_to(state)
        tap = Tap(self.sam.terminal_id, 0, card_no, now_ms, self.kind, self.route)
        d = decide(self.tables, state, tap)
        if not d.ok:
            return Sale(False, _reason(d.result), card_no, 0, balance, Result(d.result).name, recovered, io.n)
        apply_effects(state, self.kind, self.route, self.sam.terminal_id, now_ms, d.deltas, d.concession, d.day,
                      d.passback)
        record = TransitRecord.from_card_state(state, self.kind, self.route, d.fare_fen).encode()
        when = _when(self.tables, now_ms)
        init = t.parse_init_purchase(await io(t.init_purchase(d.fare_fen, self.sam.terminal_id6, True).encode()))
        if init.balance_fen != balance:
            raise t.CardAnswerError(f"balance changed between GET BALANCE ({balance}) and INITIALIZE"
                                    f" ({init.balance_fen})")
        t.ok_data(await io(t.update_capp_cache(t.TRANSIT_RECORD, t.SFI_CAPP, record).encode()), "UPDATE CAPP DATA CACHE")
        seq = self.sam.take_seq()
        try:
            ticket = self.sam.purchase(card_no, init.card_random, init.offline_counter, d.fare_fen, when,
                                       COMPOUND_PURCHASE, seq)
            self.store.begin(Pending(seq, card_no, init.offline_counter, d.fare_fen, balance, COMPOUND_PURCHASE,
                                     when, init.card_random, self.kind, self.route), self.sam.next_seq)
        except BaseException:
            self.sam.next_seq = seq  # nothing went to the card with it
            raise
        answer = t.parse_debit(await io(t.debit(seq, when.bcd(), ticket.mac1).encode()))
        self.store.sold(seq, answer.tac)
        if not ticket.mac2_ok(answer.mac2):
            # The card debited itself and gave a TAC: the record is kept for the host to judge.
            return Sale(False, "card answered a wrong MAC2: reported", card_no, d.fare_fen, balance - d.fare_fen,
                        "MAC2_INVALID", recovered, io.n)
        return Sale(True, "", card_no, d.fare_fen, balance - d.fare_fen, "OK", recovered, io.n)

    async def _recover(self, io: "_Counting", p: Pending) -> int:
        """A sale whose DEBIT answer never came: ask the card whether it happened."""
        proof = t.parse_proof(await io(t.transaction_proof(p.offline_counter, p.transaction_type).encode()))
        if proof is None:
            self.store.void(p.terminal_seq)
            return 0
        ticket = self.sam.purchase(p.card_no, p.card_random, p.offline_counter, p.amount_fen, p.when,
                                   p.transaction_type, p.terminal_seq)
        self.store.sold(p.terminal_seq, proof.tac)
        if not ticket.mac2_ok(proof.mac2):
            raise t.CardAnswerError(f"the proof of sale {p.terminal_seq} has a wrong MAC2 (kept for the host)")
        return 1


class _Counting:
    def __init__(self, transmit: Transmit) -> None:
        self.transmit, self.n = transmit, 0

    async def __call__(self, apdu: bytes) -> bytes:
        self.n += 1
        return await self.transmit(apdu)


# reader_pool's errors by name: the sale does not depend on the reader driver.
_LINK_FAULTS = {"ApduTimeout": "card answered too slowly", "ReaderGone": "reader unplugged",
                "ReaderError": "reader error", "BadResponse": "card answered garbage"}

_REASONS = {
    Result.INSUFFICIENT_FUNDS: "balance too low",
    Result.PASSBACK: "already tapped here",
    Result.ISSUER_NOT_ACCEPTED: "card of an issuer not accepted here",
    Result.NO_FARE_TABLE: "out of service: no fare table in force",
}


def _reason(result: int) -> str:
    r = Result(result)
    return _REASONS.get(r, r.name.lower().replace("_", " "))


def _when(tables: FareTables, now_ms: int) -> When:
    """The local date and time the TAC covers, in the city's time zone."""
    ver = tables.at(now_ms) or tables.versions[0]
    local_s = (now_ms + ver.utc_offset_ms) // 1000
    days, secs = divmod(local_s, 86_400)
    d = date.fromordinal(date(1970, 1, 1).toordinal() + days)
    return When.of(d.strftime("%Y%m%d"), f"{secs // 3600:02d}{secs % 3600 // 60:02d}{secs % 60:02d}")
