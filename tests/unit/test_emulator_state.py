"""The emulator's state file (citycard/emulator/state_file.py): created when absent, loaded
when present, written whole or not at all, and a foreign or another card's file refused with
one clear error."""

import json
from datetime import date
from pathlib import Path

import pytest

from citycard.domain.cards import Category
from citycard.emulator import state_file
from citycard.emulator.state_file import CardStateError
from tests.support.card_terminal import DEMO_KEYS

CARD_NO = 33010050000000004


def make(card_no: int = CARD_NO, balance_fen: int = 5000):  # noqa: ANN201 - an EpurseCard
    return state_file.new_card(DEMO_KEYS, card_no, balance_fen, Category.ELDERLY, date(2028, 2, 29), lambda: bytes(4))


def test_created_when_absent_then_loaded(tmp_path: Path) -> None:
    path = state_file.default_path(tmp_path, CARD_NO)
    card, created = state_file.load_or_create(path, CARD_NO, make, lambda: bytes(4))
    assert created and path == tmp_path / "cards" / f"{CARD_NO}.json"
    issuer = card.files.issuer
    assert issuer is not None and issuer.issuer_code == 330100 and issuer.category == Category.ELDERLY
    assert (issuer.start, issuer.expiry) == (date(2028, 2, 29), date(2034, 2, 28))  # leap day: the 28th
    card.state.balance_fen = 1234
    state_file.save(path, card)
    again, created = state_file.load_or_create(path, CARD_NO, lambda: make(balance_fen=1), lambda: bytes(4))
    assert not created and again.state.balance_fen == 1234
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "is not a valid card state"),
    (json.dumps({"format": "vicc"}).encode(), "not a city-pass card state"),
    (b"\xff\xfe", "is not a valid card state"),
    (b" " * (state_file.MAX_STATE_BYTES + 1), "larger than"),
])
def test_a_foreign_file_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(CardStateError, match=message):
        state_file.load(path, lambda: bytes(4), CARD_NO)


def test_another_cards_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    state_file.save(path, make(CARD_NO + 1))
    with pytest.raises(CardStateError, match=f"holds card {CARD_NO + 1}, not card {CARD_NO}"):
        state_file.load(path, lambda: bytes(4), CARD_NO)
    with pytest.raises(CardStateError, match="cannot read"):
        state_file.load(tmp_path / "missing.json", lambda: bytes(4))
    with pytest.raises(CardStateError, match="cannot personalise"):
        state_file.new_card(DEMO_KEYS, 0, 1, 0, date(2026, 1, 1), lambda: bytes(4))
