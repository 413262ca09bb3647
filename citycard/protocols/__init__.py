"""Pure codecs (sans-I/O): the terminal wire protocol (docs/protocol.md), and the card's APDUs
and BER-TLV (apdu.py, tlv.py; docs/card.md)."""
