"""The clearing house's HTTP messages (docs/clearing.md, "The clearing house service").

Requests are msgspec Structs decoded from JSON with their bounds checked; bytes travel as
base64. Answers are plain JSON: a report or a statement as ``report_json`` / ``statement_json``
give them, a refusal as ``{"code": NAME, "reason": TEXT}``.

A verdict is signed by its issuer with the key it registered: ``verdict_bytes`` is what the
Ed25519 signature covers, so nobody but the issuer can charge a record back.
"""

import base64
import binascii
import re
from dataclasses import asdict
from typing import Any

import msgspec

from ..domain.clearing_records import (
    MAX_PREFIXES,
    MAX_REASON_CHARS,
    SettlementReport,
    Statement,
    check_city,
)

MAX_FILES = 1000  # the core's MAX_FILES_PER_DELIVERY
FILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_MANIFEST_BYTES = 1 << 20  # 1000 files of ~150 bytes each, with room
MAX_RECORD_ID_CHARS = 64
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
_VERDICT = b"citycard-clearing-verdict/1\n"
_RECORDS = b"citycard-clearing-records/1\n"


class Refusal(ValueError):
    """A request that does not check: answered 422 with ``code`` and ``reason``."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ParticipantIn(msgspec.Struct, forbid_unknown_fields=True):
    city: str
    public_key_hex: str
    net_debit_cap_fen: int
    rate_bp: int
    card_prefixes: list[str] = []


class DeliveryIn(msgspec.Struct, forbid_unknown_fields=True):
    sender: str
    window: str
    manifest_b64: str
    signature_b64: str
    files_b64: dict[str, str] = {}


class VerdictIn(msgspec.Struct, forbid_unknown_fields=True):
    issuer: str
    record_id: str
    reason: str
    signature_b64: str


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal("BAD_REQUEST", f"{what} is not base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise Refusal("BAD_REQUEST", f"the body does not check: {exc}") from None


def _city(city: str, what: str) -> str:
    try:
        return check_city(city)
    except ValueError as exc:
        raise Refusal("BAD_REQUEST", f"{what}: {exc}") from None


def participant(p: ParticipantIn) -> tuple[str, bytes, int, int, tuple[str, ...]]:
    """(city, raw public key, cap, rate, prefixes), bounds checked."""
    _city(p.city, "city")
    try:
        key = bytes.fromhex(p.public_key_hex)
    except ValueError:
        raise Refusal("BAD_REQUEST", "public_key_hex is not hexadecimal") from None
    if len(key) != PUBLIC_KEY_BYTES:
        raise Refusal("BAD_REQUEST", f"public_key_hex must be {PUBLIC_KEY_BYTES} bytes (raw Ed25519)")
    if not 0 <= p.net_debit_cap_fen <= 2**62:
        raise Refusal("BAD_REQUEST", "net_debit_cap_fen must be 0..2^62")
    if not 0 <= p.rate_bp <= 10_000:
        raise Refusal("BAD_REQUEST", "rate_bp must be 0..10000")
    if len(p.card_prefixes) > MAX_PREFIXES or not all(
            c.isascii() and c.isdigit() and 1 <= len(c) <= 19 for c in p.card_prefixes):
        raise Refusal("BAD_REQUEST", f"card_prefixes: at most {MAX_PREFIXES}, each 1..19 digits")
    return p.city, key, p.net_debit_cap_fen, p.rate_bp, tuple(p.card_prefixes)


def delivery(d: DeliveryIn) -> tuple[str, str, bytes, bytes, dict[str, bytes]]:
    """(sender, window, manifest, signature, files), bounds checked; the core checks the rest."""
    _city(d.sender, "sender")
    if len(d.files_b64) > MAX_FILES:
        raise Refusal("BAD_REQUEST", f"{len(d.files_b64)} files, at most {MAX_FILES}")
    bad = [n for n in d.files_b64 if not FILE_NAME.fullmatch(n)]
    if bad:
        raise Refusal("BAD_REQUEST", f"file name {bad[0][:80]!r}: 1..64 of [A-Za-z0-9_.-]")
    manifest = _b64(d.manifest_b64, "manifest_b64")
    if len(manifest) > MAX_MANIFEST_BYTES:
        raise Refusal("BAD_REQUEST", f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
    signature = _b64(d.signature_b64, "signature_b64")
    if len(signature) != SIGNATURE_BYTES:
        raise Refusal("BAD_REQUEST", f"signature_b64 must be {SIGNATURE_BYTES} bytes (Ed25519)")
    files = {n: _b64(t, f"files_b64[{n}]") for n, t in d.files_b64.items()}
    return d.sender, d.window[:40], manifest, signature, files


def signature_of(text: str) -> bytes:
    signature = _b64(text, "the signature")
    if len(signature) != SIGNATURE_BYTES:
        raise Refusal("BAD_REQUEST", f"the signature must be {SIGNATURE_BYTES} bytes (Ed25519), base64")
    return signature


def verdict_bytes(issuer: str, record_id: str, reason: str) -> bytes:
    """What the issuer's Ed25519 signature on a verdict covers."""
    return _VERDICT + f"{issuer}\n{record_id}\n{reason}".encode()


def records_request_bytes(issuer: str, window: str) -> bytes:
    """What an issuer signs to fetch the records cleared against its cards in a window."""
    return _RECORDS + f"{issuer}\n{window}".encode()


def verdict(v: VerdictIn) -> tuple[str, str, str, bytes]:
    _city(v.issuer, "issuer")
    if not 1 <= len(v.record_id) <= MAX_RECORD_ID_CHARS:
        raise Refusal("BAD_REQUEST", f"record_id must be 1..{MAX_RECORD_ID_CHARS} characters")
    if not 1 <= len(v.reason) <= MAX_REASON_CHARS or "\n" in v.reason:
        raise Refusal("BAD_REQUEST", f"reason must be 1..{MAX_REASON_CHARS} characters on one line")
    return v.issuer, v.record_id, v.reason, signature_of(v.signature_b64)


def statement_json(s: Statement) -> dict[str, Any]:
    return asdict(s)


def report_json(r: SettlementReport) -> dict[str, Any]:
    """A closed window's report: payer/payee amounts, positions (positive receives), statements."""
    return {
        "window": r.window,
        "records": r.records,
        "chargebacks": r.chargebacks,
        "obligations": [{"payer": o.issuer, "payee": o.acquirer, "amount_fen": o.amount_fen, "records": o.count}
                        for o in r.obligations],
        "bilateral": [{"payer": a, "payee": b, "amount_fen": fen} for (a, b), fen in sorted(r.bilateral.items())],
        "multilateral": dict(sorted(r.multilateral.items())),
        "statements": {c: statement_json(s) for c, s in sorted(r.statements.items())},
        "suspended": sorted(r.suspended),
        "charged_back": [{"record_id": c.record_id, "issuer": c.issuer, "acquirer": c.acquirer,
                          "amount_fen": c.amount_fen, "reason": c.reason} for c in r.charged_back],
    }
