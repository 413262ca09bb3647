"""Cardholders: a resident applies, is looked up, has information corrected (before and after
in the audit log). A new category reaches the holder's cards through their shards."""

import uuid
from dataclasses import asdict, dataclass, replace
from datetime import date
from typing import Any

import asyncpg

from ..domain.cards import CardStatus, Category
from ..domain.identity import citizen_id_problem
from ..domain.ops import SetProfile
from ..persistence import audit
from ..persistence import holders as rows
from .errors import Conflict, Invalid, NotFound
from .services import Services
from .who import Who

CATEGORY_BY_NAME = {c.name.lower(): int(c) for c in Category}
CATEGORY_NAMES = {v: k for k, v in CATEGORY_BY_NAME.items()}


@dataclass(frozen=True)
class Holder:
    holder_id: int
    citizen_id: str
    name: str
    birth_date: date
    category: str
    photo_ref: str
    cards: list[int]


def _holder(row: asyncpg.Record, cards: list[int]) -> Holder:
    return Holder(holder_id=row["holder_id"], citizen_id=row["citizen_id"], name=row["name"],
                  birth_date=row["birth_date"], category=CATEGORY_NAMES[row["category"]],
                  photo_ref=row["photo_ref"], cards=cards)


async def apply(svc: Services, who: Who, citizen_id: str, name: str, birth_date: date, category: str,
                photo_ref: str) -> Holder:
    """A resident applies (the identity number and birth date are checked by the caller's types)."""
    async with svc.pool.acquire() as conn, conn.transaction():
        try:
            row = await rows.insert(conn, citizen_id, name, birth_date, CATEGORY_BY_NAME[category], photo_ref)
        except rows.CitizenIdTaken:
            raise Conflict("a holder with this citizen_id exists", field="citizen_id") from None
        holder = _holder(row, [])
        await audit.record(conn, who.name, who.role, "holder.apply", f"holder:{holder.holder_id}", None,
                           asdict(holder))
    return holder


async def get(conn: rows.Conn, holder_id: int, *, lock: bool = False) -> Holder:
    found = await rows.fetch(conn, holder_id, lock=lock)
    if found is None:
        raise NotFound(f"holder {holder_id} not found")
    return _holder(*found)


async def find(svc: Services, citizen_id: str) -> Holder:
    holder_id = await rows.id_of(svc.pool, citizen_id)
    if holder_id is None:
        raise NotFound("no holder with this citizen_id")
    return await get(svc.pool, holder_id)


async def correct(svc: Services, who: Who, holder_id: int, changes: dict[str, Any], reason: str) -> Holder:
    """Correct the given fields (name, birth_date, category, photo_ref) with a reason."""
    if not changes:
        raise Invalid("nothing to correct: give at least one field", field="body")
    async with svc.pool.acquire() as conn, conn.transaction():
        before = await get(conn, holder_id, lock=True)
        problem = citizen_id_problem(before.citizen_id, changes.get("birth_date", before.birth_date))
        if problem:
            raise Invalid(f"birth_date: the citizen_id {problem}", field="birth_date")
        sets = {**changes}
        if "category" in sets:
            sets["category"] = CATEGORY_BY_NAME[sets["category"]]
        await rows.update(conn, holder_id, sets)
        after = replace(before, **changes)
        await audit.record(conn, who.name, who.role, "holder.correct", f"holder:{holder_id}", asdict(before),
                           asdict(after), reason)
    if "category" in changes:
        await _set_category(svc, after.cards, CATEGORY_BY_NAME[changes["category"]])
    return after


async def _set_category(svc: Services, card_nos: list[int], category: int) -> None:
    """The new category on every live card of the holder, through its shard (it decides concessions)."""
    views = await svc.shards.card_views(card_nos)
    ops = [SetProfile(f"profile:{v.card_no}:{uuid.uuid4().hex}", v.card_no, category, v.credit_good)
           for v in views if v is not None and v.status != CardStatus.CANCELLED]
    if ops:
        await svc.shards.apply_ops(ops, with_views=False)
