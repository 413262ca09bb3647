"""The vpcd link's framing: controls and APDUs from the reader, ATRs and responses back."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citycard.protocols.vpcd import (
    ApduEvent,
    Control,
    ControlEvent,
    VirtualCardLink,
    VpcdError,
    frame,
)

SELECT_PSE = bytes.fromhex("00A404000E315041592E5359532E444446303100")


def test_controls_and_an_apdu_in_one_read() -> None:
    link = VirtualCardLink()
    wire = bytes.fromhex("0001" "01" "0001" "04") + frame(SELECT_PSE) + bytes.fromhex("0001" "00")
    assert link.receive(wire) == [ControlEvent(Control.POWER_ON), ControlEvent(Control.GET_ATR),
                                  ApduEvent(SELECT_PSE), ControlEvent(Control.POWER_OFF)]
    assert link.pending_bytes == 0


@given(st.lists(st.binary(min_size=4, max_size=300), min_size=1, max_size=5), st.integers(1, 7))
def test_any_split_of_the_stream_gives_the_same_events(apdus: list[bytes], step: int) -> None:
    wire = b"".join(frame(a) for a in apdus)
    link = VirtualCardLink()
    events = []
    for i in range(0, len(wire), step):
        events += link.receive(wire[i:i + step])
    assert events == [ApduEvent(a) for a in apdus] and link.pending_bytes == 0


def test_the_answer_is_length_prefixed() -> None:
    assert frame(bytes.fromhex("9000")) == bytes.fromhex("00029000")
    assert frame(bytes(0xFFFF))[:2] == b"\xff\xff"


@pytest.mark.parametrize(("wire", "fault"), [
    (bytes.fromhex("0000"), "empty frame"),
    (bytes.fromhex("000103"), "unknown control byte 0x03"),
    (bytes.fromhex("000200A4"), "at least 4 bytes"),
])
def test_what_the_link_does_not_define_is_named(wire: bytes, fault: str) -> None:
    with pytest.raises(VpcdError, match=fault):
        VirtualCardLink().receive(wire)


@pytest.mark.parametrize("size", [0, 0x10000])
def test_frames_out_of_reach_are_refused(size: int) -> None:
    with pytest.raises(VpcdError, match="1 to 65535"):
        frame(bytes(size))
