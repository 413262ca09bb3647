"""The region lab's clearing: each acquirer city's clearing file of cross-city records (its
``remote_taps`` the issuer answered OK, and its confirmed ``standin_taps``), signed, delivered
over HTTP to the clearing house service, which runs in the lab's process on a schema of its
own (``LabClearing``)."""

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..clearing import client
from ..clearing.server import HouseServer
from ..clearing.service import HouseService
from ..domain.clearing_records import (
    MAX_TERMINAL_ID,
    Chargeback,
    ClearingRecord,
    SettlementReport,
    Statement,
    record_id_of,
)
from ..domain.results import Result
from ..persistence.db import drop_schema
from ..protocols.clearing_files import parse_csv, render_csv, tally
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
    code: str  # ClearingCode name, or the HTTP refusal's code
    reason: str
    cleared: int
    rejected: int
    status: int = 200  # the HTTP status the house answered
    rejections: tuple[dict[str, str], ...] = ()  # {record_id, code, reason} of each rejected record


def when_of(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y%m%d%H%M%S")


def window_of(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d")


def next_window(window: str) -> str:
    """The next day's window: the first whose close carries a chargeback of ``window``'s records."""
    return (date.fromisoformat(window) + timedelta(days=1)).isoformat()


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
    """The clearing house service (HouseService behind HouseServer, on 127.0.0.1, any free port)
    in the lab's process, spoken to over HTTP only, as a city would (citycard/clearing/client.py).
    The client is synchronous: each call runs in a thread so this loop keeps serving it."""

    def __init__(self, service: HouseService, server: HouseServer, token: str) -> None:
        self.service = service
        self.server = server
        self._token = token

    @property
    def url(self) -> str:
        return self.server.url

    @classmethod
    async def start(cls, db_url: str, schema: str, specs: list[CitySpec],
                    net_debit_cap_fen: int = NET_DEBIT_CAP_FEN) -> "LabClearing":
        """A fresh house on ``schema`` (dropped first, like the cities'), every city registered
        with the one net debit cap."""
        await drop_schema(db_url, schema)
        service = await HouseService.open(db_url, schema, retain_windows=7, pool_size=2)
        token = secrets.token_hex(16)
        server = HouseServer(service, token)
        try:
            await server.start()
            house = cls(service, server, token)
            for s in specs:
                status, body = await asyncio.to_thread(client.add_participant, server.url, token, s.code,
                                                       s.public_hex(), net_debit_cap_fen, INTERCHANGE_BP,
                                                       [str(s.prefix)])
                if status != 201:
                    raise RuntimeError(f"registering {s.code} with the clearing house: {status} {body}")
        except BaseException:
            await server.stop()
            await service.close()
            raise
        return house

    async def stop(self) -> None:
        try:
            await self.server.stop()
        finally:
            await self.service.close()

    async def deliver(self, d: Delivery) -> Answer:
        status, body = await asyncio.to_thread(client.deliver, self.url, d.sender, d.window, d.manifest,
                                               d.signature, d.files)
        if status != 200:
            return Answer(str(body.get("code")), str(body.get("reason")), 0, 0, status)
        return Answer("OK", "", int(body["accepted"]), int(body["rejected_count"]), status,
                      tuple(body.get("rejected") or ()))

    async def close(self, window: str) -> SettlementReport | None:
        status, body = await asyncio.to_thread(client.close, self.url, self._token, window)
        if status != 200:
            raise RuntimeError(f"closing window {window}: {status} {body}")
        status, body = await asyncio.to_thread(client.report, self.url, window)  # as anyone reads it
        return report_of(body) if status == 200 else None

    async def statement(self, city: str, window: str) -> Statement | None:
        status, body = await asyncio.to_thread(client.statement, self.url, window, city)
        if status != 200:
            return None
        body.pop("final", None)
        return Statement(**body)

    async def statements(self, cities: list[str], window: str) -> Mapping[str, Statement | None]:
        return {c: await self.statement(c, window) for c in cities}

    async def records(self, key: Ed25519PrivateKey, issuer: str, window: str) -> list[ClearingRecord]:
        """The records cleared against ``issuer``'s cards, as it fetches them to check."""
        status, data = await asyncio.to_thread(client.records, self.url, key, issuer, window)
        if status != 200:
            raise RuntimeError(f"{issuer} fetching its records of {window}: {status} {data[:300]!r}")
        return parse_csv(data, f"{issuer}-{window}.csv")

    async def verdict(self, key: Ed25519PrivateKey, issuer: str, record_id: str, reason: str) -> tuple[int, Any]:
        body = client.verdict_body(key, issuer, record_id, reason)
        return await asyncio.to_thread(_post, f"{self.url}/verdicts", body)

    async def settled(self, city: str, window: str) -> tuple[int, Any]:
        """The operator records that ``city`` paid its debit of ``window`` (lifts a suspension)."""
        return await asyncio.to_thread(client.settled, self.url, self._token, window, city)

    async def suspended(self) -> list[str]:
        status, body = await asyncio.to_thread(_get, f"{self.url}/suspended")
        if status != 200:
            raise RuntimeError(f"GET /suspended: {status} {body}")
        return [str(c) for c in body["suspended"]]


def _post(url: str, body: Any) -> tuple[int, Any]:
    r = httpx.post(url, json=body, timeout=client.TIMEOUT_S)
    return r.status_code, r.json()


def _get(url: str) -> tuple[int, Any]:
    r = httpx.get(url, timeout=client.TIMEOUT_S)
    return r.status_code, r.json()


def report_of(body: dict[str, Any]) -> SettlementReport:
    """A report as the house's JSON gives it (clearing/wire.py report_json), back into the
    dataclass the audit reads; the obligations are left out (the audit does not read them)."""
    return SettlementReport(
        body["window"], int(body["records"]), int(body["chargebacks"]), (),
        {(b["payer"], b["payee"]): int(b["amount_fen"]) for b in body["bilateral"]},
        {c: int(f) for c, f in body["multilateral"].items()},
        {c: Statement(**s) for c, s in body["statements"].items()}, frozenset(body["suspended"]),
        tuple(Chargeback(c["record_id"], c["issuer"], c["acquirer"], int(c["amount_fen"]), "", c["reason"])
              for c in body["charged_back"]))


def unknown_card_record(acquirer: str, window: str, issuer: str, card_no: int, time_ms: int) -> ClearingRecord:
    """A record for a card no issuer has: ``card_no`` outside ``issuer``'s prefix (on the last
    terminal id, which the lab's validators never use, so the id is no real tap's)."""
    return _record(acquirer, window, issuer, MAX_TERMINAL_ID, 1, card_no, 100, time_ms)


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
           "delivery", "next_window", "report_of", "unknown_card_record", "when_of", "window_of"]
