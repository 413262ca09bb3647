"""The audit log, for auditors: who did what, when, before and after."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from ...persistence import audit
from ..auth import Operator, Perm, require
from ..strict_route import StrictRoute
from .common import Text, ctx_of

router = APIRouter(tags=["audit"], route_class=StrictRoute)


class Entry(BaseModel):
    audit_id: int
    at: datetime
    operator: str
    role: str
    action: str
    subject: str
    before: Any
    after: Any
    reason: str


@router.get("/audit", response_model=list[Entry])
async def audit_entries(request: Request,
                        subject: Annotated[Text | None, Query(max_length=100)] = None,
                        after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        op: Operator = Depends(require(Perm.AUDIT))) -> list[Entry]:  # noqa: B008
    """Entries oldest first after ``after_id``; ``subject`` like ``card:330100...`` or ``holder:7``."""
    return [Entry(**e) for e in await audit.entries(ctx_of(request).pool, subject, after_id, limit)]
