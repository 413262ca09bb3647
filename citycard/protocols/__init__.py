"""Pure codecs: the terminal wire protocol (sans-I/O). See docs/protocol.md."""
