"""Disbursement programmes: what a programme credits (its kind fixes the purse), to whom (its
beneficiary list: ``programme_uploads.py``) and its runs per period (``programme_runs.py``;
the credits go through the shards, ``disburse.py``)."""

import pathlib
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

import asyncpg

from ..config.fare_table import load_fare_tables
from ..domain.purses import PURSE_NAMES, Purse
from ..persistence import audit
from ..persistence import programmes as store
from .errors import Invalid, NotFound
from .who import Who

Kind = Literal["welfare", "low_income_subsidy", "transport_allowance", "consumer_vouchers"]
PURSE_OF_KIND = {"welfare": Purse.GENERAL, "low_income_subsidy": Purse.GENERAL,
                 "transport_allowance": Purse.ALLOWANCE, "consumer_vouchers": Purse.VOUCHER}


@dataclass(frozen=True)
class NewProgramme:
    """A programme as asked for (its fields checked against each other by the caller's types:
    an expiry exactly for the expiring kinds, categories exactly for vouchers)."""

    name: str
    kind: Kind
    amount_fen: int
    expiry: datetime | None
    merchant_categories: list[str]


@dataclass(frozen=True)
class RunBrief:
    run_id: int
    period: str
    state: str


@dataclass(frozen=True)
class Programme:
    programme_id: int
    name: str
    kind: Kind
    purse: str
    amount_fen: int
    expiry: datetime | None
    merchant_categories: list[str]
    beneficiaries: int
    created_by: str
    created_at: datetime
    runs: list[RunBrief]


@cache
def merchant_categories(fare_table_path: pathlib.Path) -> frozenset[str]:
    """Every merchant category of every version of the fare table."""
    tables = load_fare_tables(fare_table_path)
    return frozenset(m.category for v in tables.versions for m in v.v.merchants.values())


async def create(pool: asyncpg.Pool, who: Who, new: NewProgramme, now_ms: int,
                 fare_table_path: pathlib.Path) -> Programme:
    """A disbursement programme, in the audit log. Invalid: an expiry already past, or a
    merchant category the fare table does not have."""
    until_ms = 0
    if new.expiry is not None:
        until_ms = int(new.expiry.timestamp() * 1000)
        if until_ms <= now_ms:
            raise Invalid("expiry: already past", field="expiry")
    categories = sorted(set(new.merchant_categories))
    known = merchant_categories(fare_table_path)
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise Invalid(f"merchant_categories: unknown {unknown}; the fare table has {sorted(known)}",
                      field="merchant_categories")
    async with pool.acquire() as conn, conn.transaction():
        pid = await store.insert_programme(conn, new.name, new.kind, int(PURSE_OF_KIND[new.kind]), new.amount_fen,
                                           until_ms, categories, who.name)
        programme = await get(conn, pid)
        await audit.record(conn, who.name, who.role, "programme.create", f"programme:{pid}", None,
                           jsonable(programme))
    return programme


async def get(conn: store.Conn, programme_id: int) -> Programme:
    """The programme with its runs; NotFound."""
    row = await store.programme(conn, programme_id)
    if row is None:
        raise NotFound(f"programme {programme_id} not found")
    runs = await store.run_briefs(conn, programme_id)
    return Programme(
        programme_id=row["programme_id"], name=row["name"], kind=row["kind"], purse=PURSE_NAMES[row["purse"]],
        amount_fen=row["amount_fen"], expiry=ms_to_dt(row["until_ms"]) if row["until_ms"] else None,
        merchant_categories=list(row["merchant_categories"]), beneficiaries=row["beneficiaries"],
        created_by=row["created_by"], created_at=row["created_at"],
        runs=[RunBrief(r["run_id"], r["period"], r["state"]) for r in runs])


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def jsonable(value: Any) -> Any:
    """A result as the audit log keeps it: what the API answered, as JSON (a UTC time ends in Z)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        text = value.isoformat()
        return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
