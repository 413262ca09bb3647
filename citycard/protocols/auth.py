"""Terminal authentication: per-terminal keys derived from a master key, and the HELLO MAC."""

import hashlib
import hmac

KEY_LABEL = b"citycard/terminal-key/v1"
AUTH_LABEL = b"citycard/auth/v1"


def terminal_key(master_key: bytes, terminal_id: int) -> bytes:
    """K_t = HMAC-SHA256(master_key, KEY_LABEL || terminal_id as 8-byte big-endian)."""
    return hmac.new(master_key, KEY_LABEL + terminal_id.to_bytes(8, "big"), hashlib.sha256).digest()


def auth_mac(key: bytes, terminal_id: int, terminal_nonce: bytes, server_nonce: bytes) -> bytes:
    """MAC = HMAC-SHA256(K_t, AUTH_LABEL || terminal_id(8, BE) || terminal_nonce || server_nonce)."""
    msg = AUTH_LABEL + terminal_id.to_bytes(8, "big") + terminal_nonce + server_nonce
    return hmac.new(key, msg, hashlib.sha256).digest()


def verify_mac(
    key: bytes, terminal_id: int, terminal_nonce: bytes, server_nonce: bytes, mac: bytes
) -> bool:
    return hmac.compare_digest(auth_mac(key, terminal_id, terminal_nonce, server_nonce), mac)
