"""Cardholders over HTTP: apply, query, correct information; the card-services layer
(cards/holders.py) does the work, before and after kept in the audit log."""

from dataclasses import asdict
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ...cards import holders
from ...domain.identity import citizen_id_problem
from ..auth import Operator, Perm, require
from ..strict_route import StrictRoute
from .common import HolderId, ReasonText, Text, ctx_of

router = APIRouter(tags=["cardholders"], route_class=StrictRoute)
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


def _answer(h: holders.Holder) -> Holder:
    return Holder(**asdict(h))


@router.post("/holders", status_code=201, response_model=Holder)
async def apply(body: HolderIn, request: Request, op: Operator = Depends(require(Perm.CARDS))) -> Holder:  # noqa: B008
    """A resident applies: the identity number's check character and birth date are checked."""
    svc = ctx_of(request).services
    return _answer(await holders.apply(svc, op, body.citizen_id, body.name, body.birth_date, body.category,
                                       body.photo_ref))


@router.get("/holders/{holder_id}", response_model=Holder)
async def get_holder(holder_id: HolderId, request: Request,
                     op: Operator = Depends(require(Perm.READ))) -> Holder:  # noqa: B008
    return _answer(await holders.get(ctx_of(request).pool, holder_id))


@router.get("/holders", response_model=Holder, responses={404: {"description": "no holder with this citizen_id"}})
async def find_holder(request: Request,
                      citizen_id: Annotated[CitizenId, Query()],
                      op: Operator = Depends(require(Perm.READ))) -> Holder:  # noqa: B008
    return _answer(await holders.find(ctx_of(request).services, citizen_id))


@router.patch("/holders/{holder_id}", response_model=Holder)
async def correct(holder_id: HolderId, body: HolderPatch, request: Request,
                  op: Operator = Depends(require(Perm.CARDS))) -> Holder:  # noqa: B008
    """Correct a holder's information, with a reason. A new category reaches the holder's
    cards through their shards (it decides concessions)."""
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"reason"})
    changes = {k: v for k, v in changes.items() if v is not None}
    return _answer(await holders.correct(ctx_of(request).services, op, holder_id, changes, body.reason))
