"""The virtual smart card side of vsmartcard's vpcd link, sans-I/O.

pcscd's vpcd driver (Debian ``vsmartcard-vpcd``) listens on TCP (127.0.0.1:35963 for its
first reader) and a virtual card connects to it. Both directions are frames of a 2-byte
big-endian length and a payload. From the reader, a 1-byte payload is a control (power off,
power on, reset, ask for the ATR) and a longer one a command APDU; the card answers the ATR
request with its ATR and each APDU with its response APDU, and answers controls otherwise
with nothing.

``VirtualCardLink`` turns received bytes into events and events' answers into bytes; the
emulator (an I/O shell) feeds it the socket and its card.
"""

from dataclasses import dataclass
from enum import IntEnum

LENGTH_BYTES = 2
MAX_PAYLOAD_BYTES = 0xFFFF  # the length field's reach; an extended APDU fits
VPCD_PORT = 0x8C7B  # 35963: the first vpcd reader's port in /etc/reader.conf.d/vpcd


class Control(IntEnum):
    POWER_OFF = 0x00
    POWER_ON = 0x01
    RESET = 0x02
    GET_ATR = 0x04


class VpcdError(ValueError):
    """The reader sent something the link does not define."""


@dataclass(frozen=True)
class ControlEvent:
    control: Control


@dataclass(frozen=True)
class ApduEvent:
    apdu: bytes


Event = ControlEvent | ApduEvent


def frame(payload: bytes) -> bytes:
    """One frame to the reader: an ATR or a response APDU."""
    if not 0 < len(payload) <= MAX_PAYLOAD_BYTES:
        raise VpcdError(f"a frame carries 1 to {MAX_PAYLOAD_BYTES} bytes, not {len(payload)}")
    return len(payload).to_bytes(LENGTH_BYTES, "big") + payload


class VirtualCardLink:
    """Bytes from the reader in, events out. Holds at most one partial frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive(self, data: bytes) -> list[Event]:
        """The events completed by ``data``; VpcdError on a frame the link does not define
        (the shell drops the connection: the reader sees the card pulled)."""
        self._buf += data
        events: list[Event] = []
        while len(self._buf) >= LENGTH_BYTES:
            n = int.from_bytes(self._buf[:LENGTH_BYTES], "big")
            if n == 0:
                raise VpcdError("an empty frame from the reader")
            if len(self._buf) < LENGTH_BYTES + n:
                break
            payload = bytes(self._buf[LENGTH_BYTES:LENGTH_BYTES + n])
            del self._buf[:LENGTH_BYTES + n]
            events.append(_event(payload))
        return events

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


def _event(payload: bytes) -> Event:
    if len(payload) == 1:
        try:
            return ControlEvent(Control(payload[0]))
        except ValueError:
            raise VpcdError(f"unknown control byte 0x{payload[0]:02X} from the reader") from None
    if len(payload) < 4:
        raise VpcdError(f"a command APDU has at least 4 bytes, this one {len(payload)}")
    return ApduEvent(payload)
