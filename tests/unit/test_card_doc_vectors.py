"""docs/card.md's vectors of a compound purchase and a load, replayed: each command of the
table sent to the pure card gives the answer the table shows, and a SAM and a host working
from the issuer's master keys (tests/support/card_terminal.py) send exactly those commands."""

import re
from datetime import date
from itertools import count

from citycard.domain.cards import Category
from citycard.domain.taps import TapKind
from citycard.protocols.apdu import read_record
from citycard.protocols.card_files import TransitRecord, personalise
from citycard.protocols.epurse_card import EpurseCard
from tests.support.card_terminal import DEMO_KEYS, CardTerminal, apdu_proof
from tests.support.paths import ROOT

CARD_NO = 33010050000000004
HEADING = "### Vectors: a compound purchase and a load"
RIDE = TransitRecord(((4097, 1_796_544_900),), ((0, 20793, 1),), int(TapKind.BUS), 42, 150)


def doc_rows() -> list[tuple[str, bytes, bytes]]:
    text = (ROOT / "docs" / "card.md").read_text()
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`"):
            command, answer = (bytes.fromhex(re.sub(r"[`\s]", "", c)) for c in cells[1:])
            rows.append((cells[0], command, answer))
    return rows


def new_card() -> EpurseCard:
    it = count(0x11223344)
    image = personalise(DEMO_KEYS, CARD_NO, 5000, Category.STUDENT, 330100, date(2026, 1, 1), date(2031, 12, 31))
    card = EpurseCard.from_image(image, lambda: next(it).to_bytes(4, "big"))
    card.power_on()
    return card


def test_the_docs_table_replays_against_the_card() -> None:
    rows = doc_rows()
    assert len(rows) == 10, [r[0] for r in rows]
    card = new_card()
    for step, command, answer in rows:
        assert card.answer(command).hex().upper() == answer.hex().upper(), step
    assert card.state.balance_fen == 5000 - 150 + 2000 and card.files.transit == RIDE


def test_a_sam_and_a_host_send_exactly_the_docs_commands() -> None:
    card = new_card()
    sent: list[bytes] = []

    def transmit(apdu: bytes) -> bytes:
        sent.append(apdu)
        return card.answer(apdu)

    t = CardTerminal(transmit, CARD_NO)
    t.select()
    t.purchase(150, seq=7, transit=RIDE)  # MAC2 and TAC checked against the master keys
    t.send(read_record(1, sfi=0x17).encode())
    t.send(apdu_proof(0x09, 0))
    t.load(2000)  # MAC1 and the load TAC checked
    t.send(apdu_proof(0x02, 0))
    t.send(read_record(1, sfi=0x18).encode())
    assert [a.hex().upper() for a in sent] == [c.hex().upper() for _, c, _ in doc_rows()]
