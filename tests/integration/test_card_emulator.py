"""The card emulator through the real PC/SC stack: pcscd, vsmartcard's vpcd reader, pyscard.
A terminal with its SAM (tests/support/card_terminal.py) reads the card's files, makes a
purchase, a compound purchase and a load, survives a torn purchase by GET TRANSACTION PROOF,
and sees the card removed and put back; the state outlives the emulator's run."""

import json
import signal
from collections.abc import Iterator
from datetime import date
from itertools import count
from pathlib import Path

import pytest

from citycard.domain.cards import Category
from citycard.domain.epurse_crypto import COMPOUND_PURCHASE, PURCHASE_EP
from citycard.domain.taps import TapKind
from citycard.emulator import state_file
from citycard.emulator.runner import CardEmulator
from citycard.protocols.apdu import read_binary, read_record
from citycard.protocols.card_files import IssuerData, LogEntry, TransitRecord
from tests.support.card_terminal import DEMO_KEYS, CardTerminal, apdu_proof
from tests.support.emulator import (
    EmulatorProcess,
    connect_when_present,
    drop,
    settle,
    transmitter,
    wait_card_absent,
    wait_until,
)

CARD_NO = 33010050000000004




@pytest.fixture
def emulator(pcscd: None, tmp_path: Path) -> Iterator[CardEmulator]:
    it = count(0x11223344)

    def random4() -> bytes:
        return next(it).to_bytes(4, "big")

    card = state_file.new_card(DEMO_KEYS, CARD_NO, 5000, Category.STUDENT, date(2026, 12, 6), random4)
    path = tmp_path / "card.json"
    state_file.save(path, card)
    events: list[str] = []
    emu = CardEmulator(card, path, on_event=events.append, verbose=True)
    emu.events = events  # type: ignore[attr-defined]
    insert(emu)
    try:
        yield emu
    finally:
        emu.stop()


def insert(emu: CardEmulator) -> None:
    events: list[str] = emu.events  # type: ignore[attr-defined]
    since = len(events)
    emu.insert(wait_listen_s=5)
    settle(events, since)


def terminal() -> tuple[object, CardTerminal]:
    conn = connect_when_present()
    t = CardTerminal(transmitter(conn), CARD_NO)
    assert t.select().ok
    return conn, t


def test_select_read_purchase_compound_and_load(emulator: CardEmulator) -> None:
    conn, t = terminal()
    issuer = IssuerData.decode(t.send(read_binary(sfi=0x15).encode()).check())
    assert issuer.card_no == CARD_NO and issuer.category == Category.STUDENT
    assert t.balance() == 5000

    assert t.purchase(200, seq=1).sw == 0x9000  # MAC2 and TAC checked inside
    assert t.balance() == 4800

    ride = TransitRecord(((1001, 1_765_008_900),), ((0, 20428, 1),), int(TapKind.BUS), 42, 150)
    assert t.purchase(150, seq=2, transit=ride).sw == 0x9000
    assert TransitRecord.decode(t.send(read_record(1, sfi=0x17).encode()).check()) == ride

    t.load(1000)
    assert t.balance() == 5650
    newest = LogEntry.decode(t.send(read_record(1, sfi=0x18).encode()).check())
    assert newest.amount_fen == 1000
    doc = emulator.state_on_disk()
    assert doc["purse"]["balance_fen"] == 5650  # type: ignore[index]
    assert doc["files"]["transit"] == ride.encode().hex().upper()  # type: ignore[index]
    conn.disconnect()  # type: ignore[attr-defined]


def test_a_torn_purchase_took_effect_and_its_proof_is_there_after_reinsertion(emulator: CardEmulator) -> None:
    from smartcard.Exceptions import CardConnectionException

    conn, t = terminal()
    emulator.arm_tear()
    with pytest.raises(CardConnectionException):
        t.purchase(300, seq=9, compound=True)
    drop(conn)
    wait_until("the card out of the field", lambda: not emulator.inserted)
    doc = json.loads(emulator.state_path.read_text())
    assert doc["purse"]["balance_fen"] == 4700 and doc["purse"]["offline_counter"] == 1  # the debit took effect
    wait_card_absent()

    insert(emulator)
    conn, t = terminal()
    proof = t.send(apdu_proof(COMPOUND_PURCHASE, 0)).check()
    # recompute the purchase the terminal had started: the card's random was the first one
    from citycard.domain.epurse_crypto import PurchaseInput
    from tests.support.card_terminal import TERMINAL_ID, WHEN

    p = PurchaseInput(300, TERMINAL_ID, 9, WHEN, (0x11223344).to_bytes(4, "big"), 0, COMPOUND_PURCHASE)
    mac2, tac = t.expected_proof(p)
    assert proof == mac2 + tac
    assert t.balance() == 4700
    assert t.send(apdu_proof(PURCHASE_EP, 1)).sw == 0x9406  # nothing after it
    assert any("torn" in e for e in emulator.events)  # type: ignore[attr-defined]
    conn.disconnect()  # type: ignore[attr-defined]


def test_removal_and_reinsertion_are_seen_by_pyscard(emulator: CardEmulator) -> None:
    from smartcard.Exceptions import CardConnectionException

    conn, t = terminal()
    emulator.remove()
    with pytest.raises(CardConnectionException):
        t.balance()
    drop(conn)
    wait_card_absent()
    insert(emulator)
    conn, t = terminal()
    assert t.balance() == 5000
    conn.disconnect()  # type: ignore[attr-defined]


def settle_cli(proc: EmulatorProcess) -> None:
    try:
        proc.wait_line("control power_off", 3.0)
    except AssertionError:
        pass  # see settle(): no power-down, no reset


def test_the_cli_emulator_keeps_its_state_across_runs(pcscd: None, tmp_path: Path) -> None:
    from smartcard.Exceptions import CardConnectionException

    env = {"CITYCARD_STATE_DIR": str(tmp_path)}
    first = EmulatorProcess(["--card-no", str(CARD_NO), "--balance-fen", "3000", "-v"], env)
    try:
        first.wait_line("inserted")
        settle_cli(first)
        conn, t = terminal()
        assert t.purchase(100, seq=1).sw == 0x9000
        first.signal(signal.SIGUSR1)  # pulled out
        first.wait_line("removed")
        with pytest.raises(CardConnectionException):
            t.balance()
        drop(conn)
        first.signal(signal.SIGUSR1)  # put back
        first.wait_line("inserted")
        settle_cli(first)
        conn, t = terminal()
        assert t.balance() == 2900
        conn.disconnect()  # type: ignore[attr-defined]
    finally:
        assert first.stop() == 0
    assert any("805C000204 -> 9000" in line for line in first.lines)
    path = tmp_path / "cards" / f"{CARD_NO}.json"
    assert json.loads(path.read_text())["purse"]["balance_fen"] == 2900

    second = EmulatorProcess(["--card-no", str(CARD_NO), "--balance-fen", "9999", "--for-s", "20", "-v"], env)
    try:
        assert "balance 2900 fen" in second.wait_line(f"card {CARD_NO}")
        second.wait_line("inserted")
        settle_cli(second)
        conn, t = terminal()
        assert t.balance() == 2900  # the state file's, not --balance-fen
        second.signal(signal.SIGUSR2)  # tear the next debit
        second.wait_line("tear armed")
        with pytest.raises(CardConnectionException):
            t.purchase(50, seq=2)
        second.wait_line("torn")
        drop(conn)
    finally:
        assert second.stop() == 0
    doc = json.loads(path.read_text())
    assert doc["purse"]["balance_fen"] == 2850 and doc["purse"]["last_proof"]["counter"] == 1


def test_the_cli_refuses_a_foreign_state_file_and_a_missing_vpcd(pcscd: None, tmp_path: Path) -> None:
    state = tmp_path / "other.json"
    state.write_text(json.dumps({"format": "something-else"}))
    bad = EmulatorProcess(["--card-no", str(CARD_NO), "--state", str(state)], {})
    assert bad.proc.wait(20) == 2
    assert "not a city-pass card state" in bad.stderr()

    wrong = tmp_path / "wrong.json"
    card = state_file.new_card(DEMO_KEYS, CARD_NO + 1, 1, 0, date(2026, 1, 1), lambda: bytes(4))
    state_file.save(wrong, card)
    bad = EmulatorProcess(["--card-no", str(CARD_NO), "--state", str(wrong)], {})
    assert bad.proc.wait(20) == 2
    assert f"holds card {CARD_NO + 1}, not card {CARD_NO}" in bad.stderr()

    nowhere = EmulatorProcess(["--card-no", str(CARD_NO), "--state", str(tmp_path / "n.json"), "--port", "9"], {})
    assert nowhere.proc.wait(20) == 2
    err = nowhere.stderr()
    assert "vpcd is not listening on 127.0.0.1:9" in err and len(err.strip().splitlines()) == 1


def test_the_cli_tears_the_first_debit_and_removes_the_card_after_inserted_for_s(pcscd: None, tmp_path: Path) -> None:
    from smartcard.Exceptions import CardConnectionException

    state = tmp_path / "card.json"
    run = EmulatorProcess(["--card-no", str(CARD_NO), "--state", str(state), "--balance-fen", "5000", "--tear-next-debit",
                           "--inserted-for-s", "6", "--for-s", "9", "-v"], {})
    try:
        run.wait_line("inserted")
        settle_cli(run)
        conn, t = terminal()
        with pytest.raises(CardConnectionException):
            t.purchase(100, seq=1)
        run.wait_line("removed (torn")
        drop(conn)
        assert json.loads(state.read_text())["purse"]["balance_fen"] == 4900
        run.signal(signal.SIGUSR1)  # back in, until --inserted-for-s
        run.wait_line("inserted")
        settle_cli(run)
        conn, t = terminal()
        assert t.purchase(100, seq=2).sw == 0x9000  # only the first debit tears
        run.wait_line("removed", deadline_s=8)  # --inserted-for-s
        wait_card_absent()
        drop(conn)
        assert run.proc.wait(10) == 0  # --for-s ends the run
    finally:
        run.stop()
    assert json.loads(state.read_text())["purse"]["balance_fen"] == 4800
