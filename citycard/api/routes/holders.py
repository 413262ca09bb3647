"""Cardholders: apply, query, correct information (before/after kept in the audit log)."""

from datetime import date
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ...domain.identity import citizen_id_problem
from ...domain.ops import SetProfile
from .. import audit
from ..auth import Operator, Perm, require
from ..errors import ApiError
from .common import CATEGORY_BY_NAME, CATEGORY_NAMES, HolderId, ReasonText, Text, ctx_of, op_key

router = APIRouter(tags=["cardholders"])
CategoryName = Literal["adult", "student", "elderly", "disabled"]
# 17 ASCII digits and a check character (digit or X); HolderIn checks the check character
CitizenId = Annotated[str, Field(min_length=18, max_length=18, pattern="^[0-9]{17}[0-9X]$",
                                 description="18-character resident identity number")]


def _strip(v: str) -> str:
    return v.strip()


Name = Annotated[ReasonText, AfterValidator(_strip), Field(min_length=1, max_length=100)]
PhotoRef = Annotated[Text, Field(max_length=200, description="reference to the photo in the photo store")]


class HolderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    citizen_id: CitizenId
    name: Name
    birth_date: date
    category: CategoryName = "adult"
    photo_ref: PhotoRef = ""

    @field_validator("citizen_id")
    @classmethod
    def _citizen_id(cls, v: str) -> str:
        problem = citizen_id_problem(v)
        if problem:
            raise ValueError(f"citizen_id {problem}")
        return v

    @field_validator("birth_date")
    @classmethod
    def _born_as_the_citizen_id_says(cls, v: date, info: ValidationInfo) -> date:
        citizen_id = info.data.get("citizen_id")  # absent when it was itself invalid
        problem = citizen_id and citizen_id_problem(citizen_id, v)
        if problem:
            raise ValueError(f"citizen_id {problem}")
        return v


class HolderPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: ReasonText = Field(min_length=1, max_length=500, description="why the information is corrected")
    name: Name | None = None
    birth_date: date | None = None
    category: CategoryName | None = None
    photo_ref: PhotoRef | None = None


class Holder(BaseModel):
    holder_id: int
    citizen_id: str
    name: str
    birth_date: date
    category: CategoryName
    photo_ref: str
    cards: list[int]


_COLUMNS = "holder_id, citizen_id, name, birth_date, category, photo_ref"


def _holder(row: asyncpg.Record, cards: list[int]) -> Holder:
    return Holder(holder_id=row["holder_id"], citizen_id=row["citizen_id"], name=row["name"],
                  birth_date=row["birth_date"], category=CATEGORY_NAMES[row["category"]],  # type: ignore[arg-type]
                  photo_ref=row["photo_ref"], cards=cards)


async def load_holder(conn: asyncpg.Connection | asyncpg.Pool, holder_id: int) -> Holder:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM holders WHERE holder_id = $1", holder_id)
    if row is None:
        raise ApiError(404, f"holder {holder_id} not found")
    cards = [r[0] for r in await conn.fetch(
        "SELECT card_no FROM cards WHERE holder_id = $1 ORDER BY issued_at", holder_id)]
    return _holder(row, cards)


@router.post("/holders", status_code=201, response_model=Holder)
async def apply(body: HolderIn, request: Request, op: Operator = Depends(require(Perm.CARDS))) -> Holder:  # noqa: B008
    """A resident applies: the identity number's check character and birth date are checked."""
    ctx = ctx_of(request)
    async with ctx.pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                f"INSERT INTO holders (citizen_id, name, birth_date, category, photo_ref)"
                f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
                body.citizen_id, body.name, body.birth_date, CATEGORY_BY_NAME[body.category], body.photo_ref)
        except asyncpg.UniqueViolationError:
            raise ApiError(409, "a holder with this citizen_id exists", field="citizen_id") from None
        holder = _holder(row, [])
        await audit.record(conn, op, "holder.apply", f"holder:{holder.holder_id}", None, holder.model_dump())
    return holder


@router.get("/holders/{holder_id}", response_model=Holder)
async def get_holder(holder_id: HolderId, request: Request,
                     op: Operator = Depends(require(Perm.READ))) -> Holder:  # noqa: B008
    return await load_holder(ctx_of(request).pool, holder_id)


@router.get("/holders", response_model=Holder, responses={404: {"description": "no holder with this citizen_id"}})
async def find_holder(request: Request,
                      citizen_id: Annotated[CitizenId, Query()],
                      op: Operator = Depends(require(Perm.READ))) -> Holder:  # noqa: B008
    ctx = ctx_of(request)
    holder_id = await ctx.pool.fetchval("SELECT holder_id FROM holders WHERE citizen_id = $1", citizen_id)
    if holder_id is None:
        raise ApiError(404, "no holder with this citizen_id")
    return await load_holder(ctx.pool, holder_id)


@router.patch("/holders/{holder_id}", response_model=Holder)
async def correct(holder_id: HolderId, body: HolderPatch, request: Request,
                  op: Operator = Depends(require(Perm.CARDS))) -> Holder:  # noqa: B008
    """Correct a holder's information, with a reason. A new category reaches the holder's
    cards through their shards (it decides concessions)."""
    ctx = ctx_of(request)
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"reason"})
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        raise ApiError(422, "nothing to correct: give at least one field", field="body")
    async with ctx.pool.acquire() as conn, conn.transaction():
        before = await load_holder(conn, holder_id)
        await conn.execute("SELECT 1 FROM holders WHERE holder_id = $1 FOR UPDATE", holder_id)
        birth = changes.get("birth_date", before.birth_date)
        problem = citizen_id_problem(before.citizen_id, birth)
        if problem:
            raise ApiError(422, f"birth_date: the citizen_id {problem}", field="birth_date")
        sets = {**changes}
        if "category" in sets:
            sets["category"] = CATEGORY_BY_NAME[sets["category"]]
        assignments = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(sets))
        await conn.execute(f"UPDATE holders SET {assignments}, updated_at = now() WHERE holder_id = $1",
                           holder_id, *sets.values())
        after = await load_holder(conn, holder_id)
        await audit.record(conn, op, "holder.correct", f"holder:{holder_id}", before.model_dump(),
                           after.model_dump(), body.reason)
    if "category" in changes:
        views = [await ctx.card_view(c) for c in after.cards]
        ops = [SetProfile(op_key("profile", v.card_no), v.card_no, sets["category"], v.credit_good)
               for v in views if v is not None and v.status != 2]
        if ops:
            await ctx.run_ops(ops)
    return after
