"""The reference model: plain dicts of what the record says, and the invariants every commit,
answer, recovery and snapshot must keep. The ledger decides fares; the model never re-decides
one, it checks that the record, the shards' memory and the answers agree with each other."""

from typing import TYPE_CHECKING

from citycard.domain.cards import CardState, restore_card
from citycard.domain.ledger import Ledger
from citycard.domain.results import Result
from citycard.domain.taps import JournalRow, dedupe_key

from .scenario import CardSpec
from .world import World

if TYPE_CHECKING:
    from .store import Record

_OK = int(Result.OK)
_NOT_DECIDED = frozenset((int(Result.BUSY), int(Result.RETRY), int(Result.SEQ_TOO_OLD)))
_DUPLICATE_SEQ = int(Result.DUPLICATE_SEQ)
Answer = tuple[int, int, int, bool]  # code, fare_fen, balance_fen, replay


class Model:
    def __init__(self, world: World, cards: list[CardSpec]) -> None:
        self.world = world
        self.purses: dict[int, list[int]] = {c.card_no: c.fresh().purses for c in cards}
        self.opening_fen = sum(sum(p) for p in self.purses.values())
        self.revenue_fen = 0  # paid by holders, by committed OK rows
        self.taps: dict[int, int] = {}  # dedupe key -> card_no, for every tap a terminal made
        self.committed: dict[int, JournalRow] = {}  # dedupe key -> its one row
        self.fresh_answer: dict[int, int] = {}  # dedupe key -> id of its one non-replay answer
        self.first_answer: dict[int, tuple[int, int, int]] = {}
        self.answers = self.replays = 0
        self.ops: dict[str, int] = {}  # op key -> card_no, for every card service the counter made
        self.committed_ops: dict[str, JournalRow] = {}
        self.paid_in_fen = 0  # by committed card services: top-ups in, refunds out (negative)

    # -- the record ----------------------------------------------------------------------
    def on_commit(self, store: "Record", rows: list[JournalRow]) -> None:
        fail = self.world.fail
        lsn = store.head_lsn
        for row in rows:
            lsn += 1
            if row.lsn != lsn:
                fail("journal-contiguous", f"shard {store.shard_id} commits lsn {row.lsn} after {lsn - 1}")
            if row.op_key is not None:
                self._on_op_row(row)
                continue
            key = dedupe_key(row.terminal_id, row.seq)
            if key in self.committed:
                first = self.committed[key]
                fail("tap-committed-once", f"terminal {row.terminal_id} seq {row.seq} committed again at lsn "
                     f"{row.lsn} (first at lsn {first.lsn}, result {first.result}, fare {first.amount_fen})")
            if self.taps.get(key) != row.card_no:
                fail("no-phantom-rows", f"row {row} is no tap a terminal made")
            self.committed[key] = row
            if self._move(row):
                self.revenue_fen += row.amount_fen
                self._check_conserved()

    def _move(self, row: JournalRow) -> bool:
        """Apply a committed row's purse deltas to the record; False for a refusal."""
        fail = self.world.fail
        deltas = (row.d_epurse, row.d_general, row.d_voucher, row.d_allowance, row.d_medical, row.d_deposit)
        if row.result != _OK:
            if any(deltas) or row.amount_fen:
                fail("refusal-charges-nothing", f"row {row}")
            return False
        if -sum(deltas) != row.amount_fen:
            fail("fare-equals-purse-debits", f"row {row}")
        purses = self.purses[row.card_no]
        for i, d in enumerate(deltas):
            purses[i] += d
        if min(purses) < 0:
            fail("no-overdraft", f"card {row.card_no} purses {purses} after lsn {row.lsn}")
        if purses[0] != row.balance_after_fen:
            fail("balance-after-matches-record",
                 f"row lsn {row.lsn} says {row.balance_after_fen}, the record gives {purses[0]}")
        return True

    def _on_op_row(self, row: JournalRow) -> None:
        fail = self.world.fail
        assert row.op_key is not None
        if row.op_key in self.committed_ops:
            fail("op-committed-once", f"op {row.op_key} committed again at lsn {row.lsn} "
                 f"(first at lsn {self.committed_ops[row.op_key].lsn})")
        if self.ops.get(row.op_key) != row.card_no:
            fail("no-phantom-rows", f"row {row} is no op the counter made")
        self.committed_ops[row.op_key] = row
        if self._move(row):
            self.paid_in_fen -= row.amount_fen  # a top-up's amount is negative: money in
            self._check_conserved()

    def _check_conserved(self) -> None:
        total = sum(sum(p) for p in self.purses.values())
        if total + self.revenue_fen != self.opening_fen + self.paid_in_fen:
            self.world.fail("money-conserved", f"{total} held + {self.revenue_fen} paid != {self.opening_fen} "
                            f"opening + {self.paid_in_fen} topped up less refunded")

    def on_op_answer(self, key: str, outcome: tuple[int, tuple[int, ...], int, bool], fresh_before: bool) -> None:
        """The counter got an op's outcome: it is the committed one, a retry's is a replay of it."""
        result, deltas, balance, replay = outcome
        row = self.committed_ops.get(key)
        if row is None:
            self.world.fail("answer-only-once-durable", f"op {key} answered {outcome} before it was committed")
        committed = (row.result, (row.d_epurse, row.d_general, row.d_voucher, row.d_allowance, row.d_medical,
                                  row.d_deposit), row.balance_after_fen)
        if (result, tuple(deltas), balance) != committed:
            self.world.fail("answer-is-committed-outcome", f"op {key} answered {outcome}, record has {committed}")
        if not replay and fresh_before:
            self.world.fail("retry-answer-is-replay", f"op {key} got a second non-replay answer {outcome}")

    # -- answers -------------------------------------------------------------------------
    def check_decided(self, where: str, terminal_id: int, seq: int, answer: Answer) -> None:
        """A decided answer is the committed outcome: it is never sent before the commit."""
        code = answer[0]
        if code in _NOT_DECIDED:
            return
        if code == _DUPLICATE_SEQ:
            self.world.fail("retry-is-no-duplicate", f"{where}: terminal {terminal_id} seq {seq} got DUPLICATE_SEQ")
        row = self.committed.get(dedupe_key(terminal_id, seq))
        if row is None:
            self.world.fail("answer-only-once-durable",
                            f"{where}: terminal {terminal_id} seq {seq} answered {answer} before it was committed")
        if (row.result, row.amount_fen, row.balance_after_fen) != answer[:3]:
            self.world.fail("answer-is-committed-outcome",
                            f"{where}: terminal {terminal_id} seq {seq} answered {answer}, record has "
                            f"result {row.result} fare {row.amount_fen} balance {row.balance_after_fen}")

    def on_answer(self, terminal_id: int, seq: int, answer: Answer, answer_id: int) -> None:
        """A terminal received an answer (``answer_id`` names the gateway's message: duplicated
        frames share it)."""
        self.check_decided("terminal", terminal_id, seq, answer)
        code, fare, balance, replay = answer
        if code in _NOT_DECIDED:
            return
        key = dedupe_key(terminal_id, seq)
        self.answers += 1
        if replay:
            self.replays += 1
        else:
            first_id = self.fresh_answer.setdefault(key, answer_id)
            if first_id != answer_id:
                self.world.fail("retry-answer-is-replay",
                                f"terminal {terminal_id} seq {seq} got a second non-replay answer {answer}")
        first = self.first_answer.setdefault(key, (code, fare, balance))
        if first != (code, fare, balance):
            self.world.fail("retry-answer-equals-first", f"terminal {terminal_id} seq {seq}: {answer} after {first}")

    # -- shard memory --------------------------------------------------------------------
    def check_memory(self, shard_id: int, ledger: Ledger, when: str) -> None:
        """Called when the shard's memory should equal its record (writer idle, or just loaded)."""
        for card_no, card in ledger.cards.items():
            if card.purses != self.purses[card_no]:
                self.world.fail("memory-equals-record", f"shard {shard_id} {when}: card {card_no} purses "
                                f"{card.purses} in memory, {self.purses[card_no]} in the record")

    def check_snapshot(self, store: "Record", lsn: int, states: dict[int, bytes]) -> None:
        if lsn > store.head_lsn:
            self.world.fail("snapshot-not-ahead-of-journal",
                            f"shard {store.shard_id} snapshot at lsn {lsn}, journal head {store.head_lsn}")
        if lsn == store.head_lsn:
            for card_no, state in states.items():
                card = CardState(card_no, 0, 0, 0)
                restore_card(card, state)
                if card.purses != self.purses[card_no]:
                    self.world.fail("snapshot-equals-record", f"card {card_no}: {card.purses} vs {self.purses[card_no]}")

