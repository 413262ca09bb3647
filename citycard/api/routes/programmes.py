"""Disbursement programmes over HTTP: a programme, its beneficiary list (CSV or JSON upload), runs
per period with progress and a report. The card-services layer does the work
(``cards/programmes.py``, ``cards/programme_uploads.py``, ``cards/programme_runs.py``); the
credits go through the shards (``cards/disburse.py``): at most one per (programme, period, holder)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from ...cards import programme_runs, programme_uploads, programmes
from ..auth import Operator, Perm, require
from ..disburse import runs_of
from ..errors import ApiError
from ..strict_route import StrictRoute, check_depth, limits_of, read_bounded
from .common import ctx_of
from .programme_models import (
    UPLOAD_BODY,
    Programme,
    ProgrammeIn,
    RejectsPage,
    Report,
    Run,
    RunIn,
    UploadResult,
)

router = APIRouter(tags=["disbursements"], route_class=StrictRoute)

ProgrammeId = Annotated[int, Path(ge=1, le=2**62)]
RunId = Annotated[int, Path(ge=1, le=2**62)]
UploadId = Annotated[int, Path(ge=1, le=2**62)]


# -- programmes ------------------------------------------------------------------------------

@router.post("/programmes", status_code=201, response_model=Programme)
async def create_programme(body: ProgrammeIn, request: Request,
                           op: Operator = Depends(require(Perm.PROGRAMMES))) -> Programme:  # noqa: B008
    """A disbursement programme. The purse follows the kind: welfare and low-income subsidy
    credit the general (online account) purse, transport allowance the allowance purse,
    consumer vouchers the voucher purse (usable at the given merchant categories until expiry)."""
    ctx = ctx_of(request)
    new = programmes.NewProgramme(name=body.name, kind=body.kind, amount_fen=body.amount_fen, expiry=body.expiry,
                                  merchant_categories=body.merchant_categories)
    done = await programmes.create(ctx.pool, op, new, ctx.now_ms(), ctx.settings.fare_table_path())
    return Programme.model_validate(done, from_attributes=True)


@router.get("/programmes/{programme_id}", response_model=Programme)
async def get_programme(programme_id: ProgrammeId, request: Request,
                        op: Operator = Depends(require(Perm.READ))) -> Programme:  # noqa: B008
    return Programme.model_validate(await programmes.get(ctx_of(request).pool, programme_id), from_attributes=True)


# -- beneficiary lists -----------------------------------------------------------------------

@router.post("/programmes/{programme_id}/beneficiaries", response_model=UploadResult,
             openapi_extra={"requestBody": UPLOAD_BODY},
             responses={413: {"description": "the list is too large: split it"},
                        415: {"description": "the body is neither text/csv nor application/json"}})
async def upload_beneficiaries(programme_id: ProgrammeId, request: Request,
                               op: Operator = Depends(require(Perm.PROGRAMMES))) -> UploadResult:  # noqa: B008
    """Add beneficiaries: a CSV body (`text/csv`, header `citizen_id` or `citizen_id,amount_fen`)
    or a JSON array of `{"citizen_id": ..., "amount_fen": ...}` (`application/json`). An amount
    left out or empty is the programme's. Citizen IDs are resolved to cardholders; each line
    refused is named with its number and reason (unknown_citizen, malformed_citizen_id,
    bad_amount, duplicate, bad_line). Nothing is half-written: a body that cannot be read at
    all is refused whole."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("text/csv", "application/json"):
        raise ApiError(415, "content-type: send text/csv or application/json", field="content-type")
    limits = limits_of(request)  # a million lines: a bigger limit than an ordinary body's
    body = await read_bounded(request, limits.max_upload_bytes, "; split the list")
    fmt: Literal["csv", "json"] = "csv" if media == "text/csv" else "json"
    if fmt == "json":
        check_depth(body, limits)  # Postgres parses it, and recursion has its limits there too
    done = await programme_uploads.upload(ctx_of(request).pool, op, programme_id, fmt, body)
    return UploadResult.model_validate(done, from_attributes=True)


@router.get("/programmes/{programme_id}/uploads/{upload_id}/rejects", response_model=RejectsPage)
async def upload_rejects(programme_id: ProgrammeId, upload_id: UploadId, request: Request,
                         after_line: Annotated[int, Query(ge=0, le=2**62)] = 0,
                         limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
                         op: Operator = Depends(require(Perm.READ))) -> RejectsPage:  # noqa: B008
    """Every rejected line of an upload, by line number."""
    page = await programme_uploads.rejects_page(ctx_of(request).pool, programme_id, upload_id, after_line, limit)
    return RejectsPage.model_validate(page, from_attributes=True)


# -- runs ------------------------------------------------------------------------------------

@router.post("/programmes/{programme_id}/runs", status_code=202, response_model=Run,
             responses={503: {"description": "busy: as many runs as allowed are in progress; retry later"}})
async def start_run(programme_id: ProgrammeId, body: RunIn, request: Request,
                    op: Operator = Depends(require(Perm.PROGRAMMES))) -> Run:  # noqa: B008
    """Start the run of a period in the background, or resume it if the period exists (stopped,
    failed, interrupted, or done and the list has grown since). Each beneficiary is credited
    at most once per period, however often this is called."""
    run = await programme_runs.start(runs_of(request.app), op, programme_id, body.period)
    return Run.model_validate(run, from_attributes=True)


@router.post("/runs/{run_id}/stop", response_model=Run)
async def stop_run(run_id: RunId, request: Request,
                   op: Operator = Depends(require(Perm.PROGRAMMES))) -> Run:  # noqa: B008
    """Stop a run now; POST /programmes/{id}/runs with its period resumes it. Credits already
    on their way are not lost: the resume records them without crediting again."""
    return Run.model_validate(await programme_runs.stop(runs_of(request.app), op, run_id), from_attributes=True)


@router.get("/runs/{run_id}", response_model=Run)
async def get_run(run_id: RunId, request: Request, op: Operator = Depends(require(Perm.READ))) -> Run:  # noqa: B008
    """Progress: items in total, credited, refused and pending, and the rate."""
    return Run.model_validate(await programme_runs.get(runs_of(request.app), run_id), from_attributes=True)


@router.get("/runs/{run_id}/report", response_model=Report)
async def run_report(run_id: RunId, request: Request,
                     after_holder: Annotated[int, Query(ge=0, le=2**62)] = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     op: Operator = Depends(require(Perm.READ))) -> Report:  # noqa: B008
    """Items and fen by result, and a page of the refused beneficiaries with reasons."""
    done = await programme_runs.report(runs_of(request.app), run_id, after_holder, limit)
    return Report.model_validate(done, from_attributes=True)
