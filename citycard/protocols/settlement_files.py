"""Settlement files, pure (issue 15's start): one CSV per counterparty and window, and a
signed manifest that names each file with its record count, its sum in fen and its SHA-256.

The receiver checks the manifest's Ed25519 signature with the sender's public key, then each
file against its manifest line; any mismatch refuses the whole delivery with its reason.
Bytes are canonical (fixed column order, ``\\n`` line ends, UTF-8, the manifest as sorted-key
JSON), so the same window always gives the same bytes and the same signature.
"""

import csv
import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST_VERSION = 1
COLUMNS = ("card_no", "key", "amount_fen", "kind", "route", "terminal_id", "when")


class FileRefused(ValueError):
    """A delivery that does not check; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Row:
    card_no: int
    key: str  # the record's own key: "offline:<counter>" or "online:<terminal>:<seq>"
    amount_fen: int
    kind: int
    route: int
    terminal_id: int
    when: int  # YYYYMMDDhhmmss, local to the acquirer


def render_csv(rows: Sequence[Row]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow((r.card_no, r.key, r.amount_fen, r.kind, r.route, r.terminal_id, r.when))
    return out.getvalue().encode()


def parse_csv(data: bytes, name: str) -> list[Row]:
    try:
        lines = list(csv.reader(io.StringIO(data.decode())))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FileRefused(f"{name}: not a settlement CSV ({exc})") from None
    if not lines or tuple(lines[0]) != COLUMNS:
        raise FileRefused(f"{name}: the header must be {','.join(COLUMNS)}")
    rows = []
    for n, f in enumerate(lines[1:], start=2):
        try:
            if len(f) != len(COLUMNS):
                raise ValueError(f"{len(f)} fields")
            row = Row(int(f[0]), f[1], int(f[2]), int(f[3]), int(f[4]), int(f[5]), int(f[6]))
        except ValueError as exc:
            raise FileRefused(f"{name} line {n}: {exc}") from None
        if row.amount_fen < 0:
            raise FileRefused(f"{name} line {n}: a negative amount")
        rows.append(row)
    return rows


# (file bytes, file name) -> (records, sum in fen), FileRefused if the file does not parse: another
# file format (clearing files, protocols/clearing_files.py) passes its own.
Tally = Callable[[bytes, str], tuple[int, int]]


def tally_rows(data: bytes, name: str) -> tuple[int, int]:
    rows = parse_csv(data, name)
    return len(rows), sum(r.amount_fen for r in rows)


def manifest(sender: str, window: str, files: Mapping[str, bytes], tally: Tally = tally_rows) -> bytes:
    """The manifest's canonical bytes: who, which window, and each file's count, sum and hash."""
    entries = []
    for name in sorted(files):
        records, sum_fen = tally(files[name], name)
        entries.append({"name": name, "records": records, "sum_fen": sum_fen,
                        "sha256": hashlib.sha256(files[name]).hexdigest()})
    body = {"version": MANIFEST_VERSION, "sender": sender, "window": window, "files": entries}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(key: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    return key.sign(manifest_bytes)


def check_delivery(public_key: Ed25519PublicKey, manifest_bytes: bytes, signature: bytes,
                   files: Mapping[str, bytes], tally: Tally = tally_rows) -> dict[str, Any]:
    """The manifest, if the signature and every file check; else FileRefused with the reason."""
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise FileRefused("the manifest's signature does not check with the sender's key") from None
    try:
        body = json.loads(manifest_bytes)
    except ValueError as exc:
        raise FileRefused(f"the manifest is not JSON ({exc})") from None
    if body.get("version") != MANIFEST_VERSION:
        raise FileRefused(f"manifest version {body.get('version')!r}, expected {MANIFEST_VERSION}")
    listed = {e["name"]: e for e in body.get("files", [])}
    if set(listed) != set(files):
        raise FileRefused(f"the manifest lists {sorted(listed)}, the delivery holds {sorted(files)}")
    for name, data in files.items():
        e = listed[name]
        if hashlib.sha256(data).hexdigest() != e["sha256"]:
            raise FileRefused(f"{name}: its SHA-256 is not the manifest's")
        records, sum_fen = tally(data, name)
        if records != e["records"] or sum_fen != e["sum_fen"]:
            raise FileRefused(f"{name}: {records} records for {sum_fen} fen, the manifest"
                              f" says {e['records']} for {e['sum_fen']}")
    return dict(body)
