"""The region lab's clearing: each acquirer city's clearing file of cross-city records (its
``remote_taps`` the issuer answered OK, and its confirmed ``standin_taps``), signed, delivered
to a clearing house. The house is the pure ``ClearingHouse`` in this process, behind
``LabClearing``, so the clearing-house service can take its place later."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..domain.clearing import ClearingHouse
from ..domain.clearing_records import (
    ClearingCode,
    ClearingRecord,
    SettlementReport,
    Statement,
    record_id_of,
)
from ..domain.results import Result
from ..protocols.clearing_files import render_csv, tally
from ..protocols.settlement_files import manifest, sign
from .cities import CitySpec

INTERCHANGE_BP = 50  # 0.5 %, the issuer's fee on each pair's gross
NET_DEBIT_CAP_FEN = 100_000_000


@dataclass(frozen=True)
class Delivery:
    sender: str
    window: str
    manifest: bytes
    signature: bytes
    files: dict[str, bytes]


@dataclass(frozen=True)
class Answer:
    code: str  # ClearingCode name
    reason: str
    cleared: int
    rejected: int


def when_of(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y%m%d%H%M%S")


def window_of(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d")


async def acquirer_records(conn: Any, acquirer: str, window: str) -> list[ClearingRecord]:
    """The acquirer's cross-city records of the window from its own tables; a confirmed stand-in
    wins over a later online row of the same key (one record per (terminal, seq))."""
    out: dict[tuple[int, int], ClearingRecord] = {}
    for r in await conn.fetch("SELECT issuer, terminal_id, seq, card_no, amount_fen, tap_time_ms FROM standin_taps"
                              " WHERE state = 'confirmed' AND amount_fen > 0"):
        out[(r["terminal_id"], r["seq"])] = _record(acquirer, window, r["issuer"], r["terminal_id"], r["seq"],
                                                    r["card_no"], r["amount_fen"], r["tap_time_ms"])
    for r in await conn.fetch("SELECT issuer, terminal_id, seq, card_no, fare_fen, tap_time_ms FROM remote_taps"
                              " WHERE result = $1 AND fare_fen > 0", int(Result.OK)):
        key = (r["terminal_id"], r["seq"])
        if key not in out:
            out[key] = _record(acquirer, window, r["issuer"], r["terminal_id"], r["seq"], r["card_no"],
                               r["fare_fen"], r["tap_time_ms"])
    return [out[k] for k in sorted(out)]


def _record(acquirer: str, window: str, issuer: str, terminal_id: int, seq: int, card_no: int, amount_fen: int,
            time_ms: int) -> ClearingRecord:
    return ClearingRecord(record_id_of(acquirer, terminal_id, seq), issuer, acquirer, card_no, amount_fen, "online",
                          window, terminal_id, seq, when_of(time_ms))


def delivery(key: Ed25519PrivateKey, sender: str, window: str, records: list[ClearingRecord]) -> Delivery:
    """One file per issuer (an empty delivery when there is nothing to clear), manifest, signature."""
    by_issuer: dict[str, list[ClearingRecord]] = {}
    for r in records:
        by_issuer.setdefault(r.issuer, []).append(r)
    files = {f"{sender}-{window}-{iss}.csv": render_csv(rs) for iss, rs in sorted(by_issuer.items())}
    body = manifest(sender, window, files, tally)
    return Delivery(sender, window, body, sign(key, body), files)


class LabClearing:
    """The clearing house as the lab uses it: register, deliver, close, statement, report."""

    def __init__(self, specs: list[CitySpec]) -> None:
        self._house = ClearingHouse(retain_windows=7)
        for s in specs:
            self._house.register(s.code, s.key.public_key(), NET_DEBIT_CAP_FEN, INTERCHANGE_BP, (str(s.prefix),))

    def deliver(self, d: Delivery) -> Answer:
        got = self._house.ingest(d.sender, d.window, d.manifest, d.signature, d.files)
        return Answer(ClearingCode(got.code).name, got.reason, got.accepted, len(got.rejected))

    def close(self, window: str) -> SettlementReport | None:
        return self._house.close(window).report

    def statement(self, city: str, window: str) -> Statement | None:
        return self._house.statement(city, window)

    def statements(self, cities: list[str], window: str) -> Mapping[str, Statement | None]:
        return {c: self.statement(c, window) for c in cities}


def bad_deliveries(good: Delivery, key: Ed25519PrivateKey, forger: Ed25519PrivateKey) -> list[tuple[str, Delivery]]:
    """A wrong sum (a manifest, signed by the sender, whose sum is off by 1 fen) and a forged
    signature (another key's); the duplicate is the good delivery sent again."""
    name = sorted(good.files)[0]

    def off_by_one(data: bytes, n: str) -> tuple[int, int]:
        count, total = tally(data, n)
        return count, total + (1 if n == name else 0)

    wrong = manifest(good.sender, good.window, good.files, off_by_one)
    return [("wrong sum", Delivery(good.sender, good.window, wrong, sign(key, wrong),
                                   good.files)),
            ("forged signature", Delivery(good.sender, good.window, good.manifest, sign(forger, good.manifest),
                                          good.files))]


__all__ = ["INTERCHANGE_BP", "Answer", "Delivery", "LabClearing", "acquirer_records", "bad_deliveries",
           "delivery", "when_of", "window_of"]
