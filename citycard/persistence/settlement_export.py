"""A closed window's settlement files: ``<dir>/<window>/<counterparty>.csv`` per counterparty,
``manifest.json`` and ``manifest.sig`` (Ed25519 over the manifest's bytes), made with
protocols/settlement_files.py. The same window always gives the same bytes.

The city's signing key is a PEM file (PKCS#8, mode 0600), made on first use; its public key
sits beside it as ``<key>.pub`` (raw, hex) for whoever checks the files.
"""

import os
from pathlib import Path

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..domain.settlement import WindowState, when_digits
from ..errors import CityCardError
from ..protocols.settlement_files import Row, manifest, render_csv, sign
from . import settlement_visitors as visitors
from .settlement import JOURNALED_CODES, TAP_WHERE, Closing
from .settlement_visitors import RECEIVED_WHERE

MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"


def load_or_make_key(path: Path) -> Ed25519PrivateKey:
    """The signing key in ``path``; a new one written there (0600) if the file is absent."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise CityCardError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_hex(key, path)
    return key


def public_hex(key: Ed25519PrivateKey, key_path: Path) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    _write(key_path.with_name(key_path.name + ".pub"), (raw + "\n").encode())
    return raw


async def file_rows(conn: asyncpg.Connection, start_ms: int, end_ms: int,
                    utc_offset_ms: int) -> dict[str, list[Row]]:
    """Each counterparty's records of the window, in a fixed order (online by terminal and
    seq, then offline by card and counter), visitors' rides among them (settlement_visitors)."""
    out: dict[str, list[Row]] = {}
    v_online, v_offline = await visitors.file_rows(conn, start_ms, end_ms, utc_offset_ms)
    for r in await conn.fetch(
            "SELECT tc.counterparty_id, j.card_no, j.terminal_id, j.seq, j.amount_fen, j.kind, j.route, j.tap_time_ms"
            " FROM journal j JOIN terminal_counterparty tc ON tc.terminal_id = j.terminal_id"
            f" WHERE {TAP_WHERE} ORDER BY 1, j.terminal_id, j.seq, j.shard_id, j.lsn", start_ms, end_ms):
        out.setdefault(r[0], []).append(Row(r[1], f"online:{r[2]}:{r[3]}", r[4], r[5], r[6], r[2],
                                            when_digits(r[7], utc_offset_ms)))
    for r in await conn.fetch(
            "SELECT tc.counterparty_id, o.card_no, o.offline_counter, o.amount_fen, o.kind, o.route, o.terminal_id,"
            " o.tx_when FROM offline_records o JOIN terminal_counterparty tc ON tc.terminal_id = o.terminal_id"
            f" WHERE {RECEIVED_WHERE} AND o.code = ANY($3::smallint[]) ORDER BY 1, o.card_no, o.offline_counter",
            start_ms, end_ms, JOURNALED_CODES):
        out.setdefault(r[0], []).append(Row(r[1], f"offline:{r[2]}", r[3], r[4], r[5], r[6], r[7]))
    for cp in sorted({*v_online, *v_offline}):
        mine = out.get(cp, [])
        online = [r for r in mine if r.key.startswith("online:")] + v_online.get(cp, [])
        offline = [r for r in mine if r.key.startswith("offline:")] + v_offline.get(cp, [])
        online.sort(key=lambda r: (r.terminal_id, int(r.key.rsplit(":", 1)[1])))  # stable: the journal's order kept
        offline.sort(key=lambda r: (r.card_no, int(r.key.split(":", 1)[1])))
        out[cp] = online + offline
    return out


def write_delivery(out_dir: Path, sender: str, closing: Closing, rows: dict[str, list[Row]],
                   key: Ed25519PrivateKey) -> Path:
    """Write the window's files; refuses (CityCardError) when the records no longer add up to
    the stored lines (the journal changed after closing). Returns the window's directory."""
    if closing.state not in (WindowState.CLOSED, WindowState.SETTLED):
        raise CityCardError(f"window {closing.window_id} is {closing.state or 'unknown'}: close it first")
    files: dict[str, bytes] = {}
    for line in closing.lines:
        mine = rows.get(line.counterparty_id, [])
        total = sum(r.amount_fen for r in mine)
        if (len(mine), total) != (line.taps, line.gross_fen):
            raise CityCardError(f"{line.counterparty_id}: {len(mine)} records for {total} fen now, the closed line"
                                f" says {line.taps} for {line.gross_fen}: the journal changed after closing")
        files[f"{line.counterparty_id}.csv"] = render_csv(mine)
    body = manifest(sender, closing.window_id, files)
    where = out_dir / closing.window_id
    where.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        _write(where / name, data)
    _write(where / MANIFEST, body)
    _write(where / SIGNATURE, sign(key, body))  # last: a signature means the files before it are there
    return where


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
