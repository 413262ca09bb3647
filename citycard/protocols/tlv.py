"""BER-TLV as cards use it (ISO 7816-4 / EMV), sans-I/O, and the FCI a SELECT answers with.

A tag is kept as the int of its bytes (``0x9F08``); a constructed object (bit 6 of the tag's
first byte) is parsed into ``children``. Parsing is bounded in depth and in items, so a card's
answer cannot make us recurse or allocate without limit. See docs/card.md.
"""

from dataclasses import dataclass

MAX_TAG_BYTES = 4
MAX_LENGTH_BYTES = 4  # 81..84: a length of up to 4 bytes follows
MAX_DEPTH = 8
MAX_ITEMS = 1024
PADDING = (0x00, 0xFF)  # EMV allows these before, between and after objects
CONSTRUCTED_BIT = 0x20


class TlvError(ValueError):
    """Malformed TLV (truncated, overlong, too deep, ...); the message names the fault."""


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: int
    value: bytes
    children: tuple["Tlv", ...] = ()  # parsed from ``value`` when constructed

    @property
    def constructed(self) -> bool:
        return is_constructed(self.tag)

    def find(self, tag: int) -> "Tlv | None":
        """The first object with ``tag`` among the children (not deeper)."""
        return find(self.children, tag)


def find(items: tuple[Tlv, ...], tag: int) -> Tlv | None:
    return next((t for t in items if t.tag == tag), None)


def _first_byte(tag: int) -> int:
    return tag >> (8 * ((tag.bit_length() - 1) // 8)) if tag else 0


def is_constructed(tag: int) -> bool:
    return bool(_first_byte(tag) & CONSTRUCTED_BIT)


def tag_bytes(tag: int) -> bytes:
    """The bytes of ``tag``, checked: more bytes follow iff the first's low 5 bits are all
    set, and each following byte but the last has bit 8 set."""
    if tag <= 0:
        raise TlvError(f"tag must be positive, got {tag}")
    raw = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
    if len(raw) > MAX_TAG_BYTES:
        raise TlvError(f"tag {tag:X} is longer than {MAX_TAG_BYTES} bytes")
    if raw[0] in PADDING:
        raise TlvError(f"tag {tag:X} starts with a padding byte")
    multi = raw[0] & 0x1F == 0x1F
    if multi != (len(raw) > 1) or any(b & 0x80 == 0 for b in raw[1:-1]) or (
        multi and raw[-1] & 0x80
    ):
        raise TlvError(f"tag {tag:X} is not a well-formed BER tag")
    return raw


def length_bytes(length: int) -> bytes:
    """The shortest BER length field for ``length``."""
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    if size > MAX_LENGTH_BYTES:
        raise TlvError(f"length {length} needs more than {MAX_LENGTH_BYTES} length bytes")
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def encode(item: Tlv) -> bytes:
    """Tag, length, value. The value is ``item.value`` as it is (``constructed`` builds it from
    the children), so a parsed object encodes to its bytes, padding included."""
    return tag_bytes(item.tag) + length_bytes(len(item.value)) + item.value


def encode_all(items: tuple[Tlv, ...] | list[Tlv]) -> bytes:
    return b"".join(encode(t) for t in items)


def primitive(tag: int, value: bytes) -> Tlv:
    if is_constructed(tag):
        raise TlvError(f"tag {tag:X} is constructed")
    return Tlv(tag, value)


def constructed(tag: int, *children: Tlv) -> Tlv:
    if not is_constructed(tag):
        raise TlvError(f"tag {tag:X} is primitive")
    return Tlv(tag, encode_all(children), children)


class _Parser:
    __slots__ = ("items", "max_depth", "max_items")

    def __init__(self, max_depth: int, max_items: int) -> None:
        self.max_depth = max_depth
        self.max_items = max_items
        self.items = 0

    def parse(self, data: bytes, depth: int) -> tuple[Tlv, ...]:
        out: list[Tlv] = []
        pos, end = 0, len(data)
        while pos < end:
            if data[pos] in PADDING:
                pos += 1
                continue
            if depth > self.max_depth:  # an object here, not an empty template, is too deep
                raise TlvError(f"nested deeper than {self.max_depth} levels")
            tag, pos = _read_tag(data, pos)
            length, pos = _read_length(data, pos, tag)
            if end - pos < length:
                raise TlvError(f"tag {tag:X}: value of {length} bytes truncated to {end - pos}")
            self.items += 1
            if self.items > self.max_items:
                raise TlvError(f"more than {self.max_items} TLV objects")
            value = data[pos : pos + length]
            pos += length
            children = self.parse(value, depth + 1) if is_constructed(tag) else ()
            out.append(Tlv(tag, value, children))
        return tuple(out)


def _read_tag(data: bytes, pos: int) -> tuple[int, int]:
    start = pos
    pos += 1
    if data[start] & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise TlvError(f"tag truncated at offset {start}")
            pos += 1
            if not data[pos - 1] & 0x80:
                break
            if pos - start >= MAX_TAG_BYTES:
                raise TlvError(f"tag at offset {start} is longer than {MAX_TAG_BYTES} bytes")
    return int.from_bytes(data[start:pos], "big"), pos


def _read_length(data: bytes, pos: int, tag: int) -> tuple[int, int]:
    if pos >= len(data):
        raise TlvError(f"tag {tag:X}: length missing")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    size = first & 0x7F
    if size == 0:
        raise TlvError(f"tag {tag:X}: indefinite length (80) is not allowed")
    if size > MAX_LENGTH_BYTES:
        raise TlvError(f"tag {tag:X}: length of {size} bytes exceeds {MAX_LENGTH_BYTES}")
    if len(data) - pos < size:
        raise TlvError(f"tag {tag:X}: length field truncated")
    return int.from_bytes(data[pos : pos + size], "big"), pos + size


def parse(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> tuple[Tlv, ...]:
    """Every top-level object in ``data``, constructed ones with their children parsed."""
    return _Parser(max_depth, max_items).parse(bytes(data), 1)


# -- the FCI: what SELECT answers ----------------------------------------------------------
TAG_FCI = 0x6F
TAG_DF_NAME = 0x84
TAG_PROPRIETARY = 0xA5
TAG_SFI = 0x88
TAG_APP_VERSION = 0x9F08
TAG_ISSUER_DISCRETIONARY = 0xBF0C


@dataclass(frozen=True, slots=True)
class Fci:
    df_name: bytes  # the AID (or the PSE name) selected
    sfi: int | None  # of the directory EF, in a PSE's FCI
    app_version: bytes | None
    issuer_data: tuple[Tlv, ...]  # BF0C's objects, empty without it
    proprietary: tuple[Tlv, ...]  # all of A5, for what is not named above


def parse_fci(data: bytes) -> Fci:
    items = parse(data)
    if len(items) != 1 or items[0].tag != TAG_FCI:
        raise TlvError(f"an FCI is one 6F template, got tags {[f'{t.tag:X}' for t in items]}")
    fci = items[0]
    name = fci.find(TAG_DF_NAME)
    if name is None:
        raise TlvError("FCI without a DF name (84)")
    prop = fci.find(TAG_PROPRIETARY)
    if prop is None:
        raise TlvError("FCI without a proprietary template (A5)")
    sfi_item = prop.find(TAG_SFI)
    sfi = None
    if sfi_item is not None:
        if len(sfi_item.value) != 1 or not 1 <= sfi_item.value[0] <= 30:
            raise TlvError(f"SFI (88) must be one byte 1..30, got {sfi_item.value.hex()}")
        sfi = sfi_item.value[0]
    version = prop.find(TAG_APP_VERSION)
    issuer = prop.find(TAG_ISSUER_DISCRETIONARY)
    return Fci(
        df_name=name.value,
        sfi=sfi,
        app_version=version.value if version is not None else None,
        issuer_data=issuer.children if issuer is not None else (),
        proprietary=prop.children,
    )
