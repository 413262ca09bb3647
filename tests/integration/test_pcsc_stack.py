"""The vpcd link through the real PC/SC stack: a virtual card plugged into pcscd's vpcd reader
is seen by pyscard as a card in a reader (its ATR, its answers), and pulling it is seen too."""

import json
import time

import pytest

from citycard.protocols.vpcd import VPCD_PORT
from tests.support.pcsc import READER, VirtualCard

ATR = bytes.fromhex("3B8880010000000000718100F9")  # a T=1 card; the last byte is the check byte
SELECT_PSE = bytes.fromhex("00A404000E315041592E5359532E444446303100")




def answer(apdu: bytes) -> bytes:
    return bytes.fromhex("6A82") if apdu[1] == 0xA4 else bytes.fromhex("6D00")  # no such file / INS


def connect_when_present(deadline_s: float = 10.0):  # noqa: ANN201 - a pyscard connection
    from smartcard.Exceptions import CardConnectionException, NoCardException
    from smartcard.System import readers

    end = time.monotonic() + deadline_s
    while True:
        reader = next(r for r in readers() if str(r) == READER)
        conn = reader.createConnection()
        try:
            conn.connect()
            return conn
        except (NoCardException, CardConnectionException):
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def test_a_virtual_card_is_a_card_in_a_real_reader(pcscd: None) -> None:
    from smartcard.Exceptions import CardConnectionException, NoCardException
    from smartcard.System import readers

    assert READER in [str(r) for r in readers()], f"vpcd's reader on port {VPCD_PORT}"
    card = VirtualCard(ATR, answer)
    try:
        conn = connect_when_present()
        assert bytes(conn.getATR()) == ATR
        data, sw1, sw2 = conn.transmit(list(SELECT_PSE))
        assert (data, sw1, sw2) == ([], 0x6A, 0x82)
        data, sw1, sw2 = conn.transmit(list(bytes.fromhex("80CA9F7900")))
        assert (sw1, sw2) == (0x6D, 0x00)
        assert card.apdus == [SELECT_PSE, bytes.fromhex("80CA9F7900")]
        conn.disconnect()
    finally:
        card.remove()
    # pulled out: the reader has no card any more
    end = time.monotonic() + 10
    while True:
        reader = next(r for r in readers() if str(r) == READER)
        try:
            reader.createConnection().connect()
        except (NoCardException, CardConnectionException):
            break
        assert time.monotonic() < end, "pcscd still sees the card 10 s after it was pulled"
        time.sleep(0.2)


def test_readers_list_shows_every_reader_its_card_and_the_answer_to_a_select(pcscd: None, capsys) -> None:
    from citycard.cli.main import main

    card = VirtualCard(ATR, answer)
    try:
        connect_when_present().disconnect()  # pcscd has seen the card
        assert main(["readers", "list", "--json", "--select", "A000000632010105"]) == 0
        looks = {look["reader"]: look for look in json.loads(capsys.readouterr().out)}
        assert looks[READER] == {"reader": READER, "card_present": True, "atr_hex": ATR.hex().upper(),
                                 "select_sw": "6A82", "select_meaning": looks[READER]["select_meaning"],
                                 "error": None}
        assert "not found" in looks[READER]["select_meaning"], looks[READER]
        assert looks["Virtual PCD 00 01"]["card_present"] is False  # vpcd's second reader: empty
        assert card.apdus[-1] == bytes.fromhex("00A4040008A00000063201010500")
        assert main(["readers", "list"]) == 0
        assert f"{READER}: card, ATR {ATR.hex().upper()}" in capsys.readouterr().out
    finally:
        card.remove()
    with pytest.raises(SystemExit):  # an AID of one byte: argparse names it
        main(["readers", "list", "--select", "A0"])
    assert "an AID has 5 to 16 bytes" in capsys.readouterr().err
