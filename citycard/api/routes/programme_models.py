"""The HTTP shapes of disbursement programmes: what is sent (checked here, so a bad field is
a 422 naming it), and what is answered (built from the card-services layer's results)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from ...cards.programme_uploads import SHOWN_REJECTS
from ...cards.programmes import Kind
from ...domain.ops import MAX_OP_FEN

MAX_CATEGORIES = 20
# The upload's body as OpenAPI tells it (FastAPI cannot: the route reads the body itself).
UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "text/csv": {"schema": {"type": "string"}, "example": "citizen_id,amount_fen\n11010519491231002X,5000\n"},
        "application/json": {"schema": {"type": "array", "items": {
            "type": "object", "required": ["citizen_id"],
            "properties": {"citizen_id": {"type": "string"},
                           "amount_fen": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_OP_FEN}}}}},
    },
}


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


class ProgrammeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    kind: Kind
    amount_fen: int = Field(strict=True, gt=0, le=MAX_OP_FEN, description="per beneficiary, unless the list gives one")
    expiry: AwareDatetime | None = Field(
        None, description="consumer vouchers and transport allowance: when the credited money expires")
    merchant_categories: list[str] = Field(
        default_factory=list, max_length=MAX_CATEGORIES,
        description="consumer vouchers: merchant categories the vouchers pay at (e.g. retail, books)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = _no_nul(v).strip()
        if not v:
            raise ValueError("must not be blank")
        return v

    @model_validator(mode="after")
    def _by_kind(self) -> "ProgrammeIn":
        expiring = self.kind in ("transport_allowance", "consumer_vouchers")
        if expiring and self.expiry is None:
            raise ValueError(f"expiry: required for {self.kind}")
        if not expiring and self.expiry is not None:
            raise ValueError(f"expiry: {self.kind} money does not expire")
        if self.kind == "consumer_vouchers" and not self.merchant_categories:
            raise ValueError("merchant_categories: vouchers need at least one")
        if self.kind != "consumer_vouchers" and self.merchant_categories:
            raise ValueError("merchant_categories: only for consumer_vouchers")
        return self


class RunBrief(BaseModel):
    run_id: int
    period: str
    state: str


class Programme(BaseModel):
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


class RejectedLine(BaseModel):
    line: int = Field(description="CSV: the line in the file (the header is line 1); JSON: the item, from 1")
    citizen_id: str
    reason: Literal["unknown_citizen", "malformed_citizen_id", "bad_amount", "duplicate", "bad_line"]
    detail: str


class UploadResult(BaseModel):
    upload_id: int
    programme_id: int
    format: Literal["csv", "json"]
    lines: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    rejected_lines: list[RejectedLine] = Field(description=f"the first {SHOWN_REJECTS}, by line")
    more_rejected: bool = Field(description="true: page the rest with GET .../uploads/{upload_id}/rejects")
    beneficiaries: int = Field(description="the programme's list after this upload")


class RejectsPage(BaseModel):
    upload_id: int
    items: list[RejectedLine]
    next_after_line: int | None


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period: str = Field(pattern=r"^[A-Za-z0-9_-]{1,20}$", description="e.g. 2026-11: one credit per holder per period")


class Run(BaseModel):
    run_id: int
    programme_id: int
    period: str
    state: Literal["running", "stopped", "failed", "done", "interrupted"] = Field(
        description="interrupted: the record says running but no runner is alive (restart): resume it")
    total: int
    credited: int
    refused: int
    pending: int
    credited_fen: int
    rate_per_s: float = Field(description="items decided per second since the latest (re)start")
    error: str
    started_at: datetime
    resumed_at: datetime
    finished_at: datetime | None
    resumed: bool = Field(False, description="POST: the period existed and was picked up again")


class ResultCount(BaseModel):
    outcome: Literal["pending", "credited", "refused"]
    result: str
    reason: str
    items: int
    amount_fen: int


class RefusedItem(BaseModel):
    holder_id: int
    citizen_id: str
    card_no: int | None
    amount_fen: int
    result: str
    reason: str


class Report(BaseModel):
    run: Run
    by_result: list[ResultCount]
    refused: list[RefusedItem]
    next_after_holder: int | None = Field(description="pass as after_holder for the next page of refused items")
