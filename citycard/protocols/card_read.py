"""READ BINARY and READ RECORD on the city-pass application's files, pure.

Files are named by their SFI (ISO 7816-4): READ BINARY ``00 B0 80|SFI offset Le``, READ
RECORD ``00 B2 n SFI<<3|4 Le``. The application has no current EF (it is never selected by
file id), so a command without an SFI is refused with 6986. Status words in docs/card.md.
"""

from collections.abc import Sequence

from .apdu import SHORT_MAX_LE_BYTES, Command, Response, StatusWord
from .card_files import SFI_CAPP, SFI_HOLDER, SFI_ISSUER, SFI_LOG, TRANSIT_RECORD

BINARY_FILES = frozenset({SFI_ISSUER, SFI_HOLDER})
RECORD_FILES = frozenset({SFI_CAPP, SFI_LOG})


def sw(word: int) -> bytes:
    return Response(b"", int(word)).encode()


def read_binary(cmd: Command, binaries: dict[int, bytes]) -> bytes:
    """``binaries``: SFI -> the file's bytes."""
    if not cmd.p1 & 0x80:
        return sw(StatusWord.COMMAND_NOT_ALLOWED)  # no current EF to read
    sfi = cmd.p1 & 0x1F
    if cmd.p1 & 0x60:
        return sw(StatusWord.INCORRECT_P1P2)
    if sfi in RECORD_FILES:
        return sw(StatusWord.COMMAND_INCOMPATIBLE_WITH_FILE)
    content = binaries.get(sfi)
    if content is None:
        return sw(StatusWord.FILE_NOT_FOUND)
    if cmd.p2 >= len(content):
        return sw(StatusWord.WRONG_P1P2)  # 6B00: the offset is past the end
    return _up_to_le(cmd, content[cmd.p2:])


def read_record(cmd: Command, capp_records: Sequence[bytes], log: Sequence[bytes]) -> bytes:
    """``capp_records``: SFI 0x17's records, record 1 first; ``log``: SFI 0x18's, newest first."""
    if cmd.p2 & 0x07 != 0x04:
        return sw(StatusWord.INCORRECT_P1P2)  # only "record number in P1"
    sfi = cmd.p2 >> 3
    if sfi == 0:
        return sw(StatusWord.COMMAND_NOT_ALLOWED)
    if sfi in BINARY_FILES:
        return sw(StatusWord.COMMAND_INCOMPATIBLE_WITH_FILE)
    records = {SFI_CAPP: capp_records, SFI_LOG: log}.get(sfi)
    if records is None:
        return sw(StatusWord.FILE_NOT_FOUND)
    if not 1 <= cmd.p1 <= len(records):
        return sw(StatusWord.RECORD_NOT_FOUND)
    return _up_to_le(cmd, records[cmd.p1 - 1])


def _up_to_le(cmd: Command, data: bytes) -> bytes:
    """Le 00 (or none) reads up to 256 bytes; a longer explicit Le than there is gets 6Cxx
    with the exact length (the terminal resends, apdu.follow_up)."""
    ne = cmd.le if cmd.le is not None else SHORT_MAX_LE_BYTES
    if ne == SHORT_MAX_LE_BYTES:
        return Response(data[:ne], int(StatusWord.OK)).encode()
    if ne > len(data):
        return sw(int(StatusWord.WRONG_LE) | len(data))
    return Response(data[:ne], int(StatusWord.OK)).encode()


__all__ = ["BINARY_FILES", "RECORD_FILES", "TRANSIT_RECORD", "read_binary", "read_record", "sw"]
