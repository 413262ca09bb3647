"""Repeated keys. msgspec keeps the last value of a key a map repeats, so a tap naming `seq`
or `card` twice would be decided by whichever came last. The server refuses such a message
(BAD_MESSAGE, docs/protocol.md section 3) instead; this finds one, cheaply in the common case.
"""

import msgspec
from msgspec import Raw

_generic = msgspec.msgpack.Decoder()
_encode = msgspec.msgpack.Encoder().encode
_keys = msgspec.msgpack.Decoder(dict[str, Raw])
_items = msgspec.msgpack.Decoder(list[Raw])


def repeats_key(body: bytes, typed_again: bytes, list_field: str = "") -> bool:
    """Whether the message's map, or a map in its ``list_field``, repeats a key. ``list_field``:
    the list of maps the message's type reads ("taps" of a batch, "records" of an upload; ""
    none), which its typed decode proved a list of maps; a field of that name in another
    message is unknown there and may hold anything. ``typed_again``: the decoded message encoded
    again; equal to ``body`` (a sender encoding our structs) proves no repeat for one encode.
    Else a canonical sender is proven by re-encoding the generic decode; only other senders
    pay the exact walk (~1.5 us a tap)."""
    if typed_again == body:
        return False
    try:
        if _encode(_generic.decode(body)) == body:  # a repeat re-encodes shorter: never equal
            return False
    except (msgspec.DecodeError, TypeError, ValueError):
        pass  # keys the generic decoder cannot hold (in an ignored field): walk it
    return _exact(body, list_field)


def _exact(body: bytes, list_field: str) -> bool:
    keys = _keys.decode(body)
    if len(keys) != map_entries(body):
        return True
    raw = keys.get(list_field) if list_field else None
    if raw is not None:
        for item in _items.decode(raw):
            b = bytes(item)
            if len(_keys.decode(b)) != map_entries(b):
                return True
    return False


def map_entries(b: bytes) -> int:
    """The entry count in a MessagePack map header (fixmap, map 16, map 32)."""
    h = b[0]
    if 0x80 <= h <= 0x8F:
        return h & 0x0F
    if h == 0xDE:
        return int.from_bytes(b[1:3], "big")
    if h == 0xDF:
        return int.from_bytes(b[1:5], "big")
    return -1
