"""Settlement files (issue 15's start): canonical CSV and manifest, the signature, and each
refusal with its reason: a changed file, a wrong sum, a forged signature, a missing file."""

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citycard.protocols.settlement_files import (
    FileRefused,
    Row,
    check_delivery,
    manifest,
    parse_csv,
    render_csv,
    sign,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ROWS = [Row(31000000000000011, "offline:0", 182, 1, 12, 4097, 20261206081500),
        Row(31000000000000029, "online:4097:77", 200, 1, 12, 4097, 20261206081612)]


def delivery() -> tuple[bytes, bytes, dict[str, bytes]]:
    files = {"330100-to-310000.csv": render_csv(ROWS), "330100-to-320100.csv": render_csv(ROWS[:1])}
    m = manifest("330100", "2026-12-06", files)
    return m, sign(KEY, m), files


def test_the_same_window_gives_the_same_bytes_and_checks() -> None:
    m, sig, files = delivery()
    assert delivery() == (m, sig, files)
    body = check_delivery(KEY.public_key(), m, sig, files)
    assert body["sender"] == "330100" and body["window"] == "2026-12-06"
    first = next(e for e in body["files"] if e["name"] == "330100-to-310000.csv")
    assert (first["records"], first["sum_fen"]) == (2, 382)
    assert first["sha256"] == hashlib.sha256(files["330100-to-310000.csv"]).hexdigest()
    assert parse_csv(files["330100-to-310000.csv"], "x") == ROWS


def test_every_mismatch_is_refused_with_its_reason() -> None:
    m, sig, files = delivery()
    changed = dict(files, **{"330100-to-310000.csv": files["330100-to-310000.csv"].replace(b"182", b"183")})
    with pytest.raises(FileRefused, match="SHA-256"):
        check_delivery(KEY.public_key(), m, sig, changed)
    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    with pytest.raises(FileRefused, match="signature"):
        check_delivery(other.public_key(), m, sig, files)
    with pytest.raises(FileRefused, match="delivery holds"):
        check_delivery(KEY.public_key(), m, sig, {"330100-to-310000.csv": files["330100-to-310000.csv"]})
    # a manifest whose sum lies, signed by the sender itself: the sum is checked, not trusted
    body = json.loads(m)
    body["files"][0]["sum_fen"] += 1
    lying = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(FileRefused, match="the manifest says"):
        check_delivery(KEY.public_key(), lying, sign(KEY, lying), files)
    with pytest.raises(FileRefused, match="header"):
        parse_csv(b"card,amount\n1,2\n", "bad.csv")
    with pytest.raises(FileRefused, match="line 2"):
        parse_csv(render_csv(ROWS).replace(b"182", b"1.5"), "bad.csv")
