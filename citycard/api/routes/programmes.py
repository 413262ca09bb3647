"""Disbursement programmes: a programme, its beneficiary list (CSV or JSON upload), runs per
period with progress and a report. The credits themselves go through the shards (see
``api/disburse.py``): at most one per (programme, period, holder)."""

import pathlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from ...config.fare_table import load_fare_tables
from ...domain.ops import MAX_OP_FEN
from ...domain.purses import PURSE_NAMES, Purse
from .. import audit
from ..auth import Operator, Perm, require
from ..disburse import (
    ANALYZE_AFTER_ROWS,
    REFUSED,
    STATE_NAMES,
    Runner,
    refusal_reason,
    result_name,
    runs_of,
    terms_of,
)
from ..errors import ApiError
from .common import ctx_of

router = APIRouter(tags=["disbursements"])

Kind = Literal["welfare", "low_income_subsidy", "transport_allowance", "consumer_vouchers"]
PURSE_OF_KIND = {"welfare": Purse.GENERAL, "low_income_subsidy": Purse.GENERAL,
                 "transport_allowance": Purse.ALLOWANCE, "consumer_vouchers": Purse.VOUCHER}
ProgrammeId = Annotated[int, Path(ge=1, le=2**62)]
RunId = Annotated[int, Path(ge=1, le=2**62)]
UploadId = Annotated[int, Path(ge=1, le=2**62)]
MAX_UPLOAD_BYTES = 80 * 2**20  # a million lines with amounts are ~26 MiB as CSV, ~48 MiB as JSON
MAX_UPLOAD_LINES = 2_000_000
SHOWN_REJECTS = 1000  # rejected lines in the upload's answer; the rest: GET .../rejects
MAX_CATEGORIES = 20
UPLOAD_COPY_CHUNK_BYTES = 1 << 20
UPLOAD_WORK_MEM = "64MB"  # per sort or hash of the upload's statements (one upload per programme at a time)
# The one column of a CSV line as COPY sees it: separator and quote bytes no text file has,
# so Postgres hands over each line whole and the fields are split in SQL.
_COPY_DELIMITER, _COPY_QUOTE = "\x1f", "\x1e"


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


class ProgrammeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    kind: Kind
    amount_fen: int = Field(gt=0, le=MAX_OP_FEN, description="per beneficiary, unless the list gives one")
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


# -- programmes ------------------------------------------------------------------------------

@cache
def _merchant_categories(fare_table_path: str) -> frozenset[str]:
    tables = load_fare_tables(pathlib.Path(fare_table_path))
    return frozenset(m.category for v in tables.versions for m in v.v.merchants.values())


@router.post("/programmes", status_code=201, response_model=Programme)
async def create_programme(body: ProgrammeIn, request: Request,
                           op: Operator = Depends(require(Perm.PROGRAMMES))) -> Programme:  # noqa: B008
    """A disbursement programme. The purse follows the kind: welfare and low-income subsidy
    credit the general (online account) purse, transport allowance the allowance purse,
    consumer vouchers the voucher purse (usable at the given merchant categories until expiry)."""
    ctx = ctx_of(request)
    until_ms = 0
    if body.expiry is not None:
        until_ms = int(body.expiry.timestamp() * 1000)
        if until_ms <= ctx.now_ms():
            raise ApiError(422, "expiry: already past", field="expiry")
    categories = sorted(set(body.merchant_categories))
    known = _merchant_categories(str(ctx.settings.fare_table_path()))
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise ApiError(422, f"merchant_categories: unknown {unknown}; the fare table has {sorted(known)}",
                       field="merchant_categories")
    async with ctx.pool.acquire() as conn, conn.transaction():
        pid = await conn.fetchval(
            "INSERT INTO programmes (name, kind, purse, amount_fen, until_ms, merchant_categories, created_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING programme_id",
            body.name, body.kind, int(PURSE_OF_KIND[body.kind]), body.amount_fen, until_ms, categories, op.name)
        programme = await _programme(conn, pid)
        await audit.record(conn, op, "programme.create", f"programme:{pid}", None, programme.model_dump(mode="json"))
    return programme


@router.get("/programmes/{programme_id}", response_model=Programme)
async def get_programme(programme_id: ProgrammeId, request: Request,
                        op: Operator = Depends(require(Perm.READ))) -> Programme:  # noqa: B008
    return await _programme(ctx_of(request).pool, programme_id)


async def _programme(conn: asyncpg.Connection | asyncpg.Pool, programme_id: int) -> Programme:
    row = await conn.fetchrow("SELECT * FROM programmes WHERE programme_id = $1", programme_id)
    if row is None:
        raise ApiError(404, f"programme {programme_id} not found")
    runs = await conn.fetch("SELECT run_id, period, state FROM disbursement_runs WHERE programme_id = $1"
                            " ORDER BY run_id", programme_id)
    return Programme(
        programme_id=row["programme_id"], name=row["name"], kind=row["kind"], purse=PURSE_NAMES[row["purse"]],
        amount_fen=row["amount_fen"], expiry=_ms_to_dt(row["until_ms"]) if row["until_ms"] else None,
        merchant_categories=list(row["merchant_categories"]), beneficiaries=row["beneficiaries"],
        created_by=row["created_by"], created_at=row["created_at"], runs=[RunBrief(**dict(r)) for r in runs])


def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


# -- beneficiary lists -----------------------------------------------------------------------

_UPLOAD_BODY = {
    "required": True,
    "content": {
        "text/csv": {"schema": {"type": "string"}, "example": "citizen_id,amount_fen\n11010519491231002X,5000\n"},
        "application/json": {"schema": {"type": "array", "items": {
            "type": "object", "required": ["citizen_id"],
            "properties": {"citizen_id": {"type": "string"},
                           "amount_fen": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_OP_FEN}}}}},
    },
}

# Each line's fields, from the raw lines COPY loaded (line 1 is the header).
_CSV_LINES = """
INSERT INTO up_lines (line_no, citizen_id, amount_raw, pre_code, pre_detail)
SELECT line_no + 1, upper(btrim(split_part(line, ',', 1), ' "')),
       nullif(btrim(split_part(line, ',', 2), ' "'), ''),
       CASE WHEN length(line) - length(replace(line, ',', '')) >= $1 THEN 'bad_line' END,
       CASE WHEN length(line) - length(replace(line, ',', '')) >= $1 THEN 'more fields than the header' END
FROM up_csv WHERE btrim(coalesce(line, '')) <> ''
"""

# JSON is parsed by Postgres, once: a million items never become Python objects. A body that
# is not an array, or too long a one, yields no lines (and is told apart afterwards).
_JSON_LINES = """
WITH d AS MATERIALIZED (SELECT $1::jsonb AS doc)
INSERT INTO up_lines (line_no, citizen_id, amount_raw, pre_code, pre_detail)
SELECT n,
       CASE WHEN jsonb_typeof(v -> 'citizen_id') = 'string' THEN upper(btrim(v ->> 'citizen_id')) END,
       CASE WHEN jsonb_typeof(v -> 'amount_fen') = 'number' THEN v ->> 'amount_fen' END,
       CASE WHEN jsonb_typeof(v) <> 'object' THEN 'bad_line'
            WHEN (v - 'citizen_id' - 'amount_fen') <> '{}'::jsonb THEN 'bad_line'
            WHEN jsonb_typeof(v -> 'amount_fen') NOT IN ('number', 'null') THEN 'bad_amount'
       END,
       CASE WHEN jsonb_typeof(v) <> 'object' THEN 'not an object'
            WHEN (v - 'citizen_id' - 'amount_fen') <> '{}'::jsonb THEN 'fields other than citizen_id, amount_fen'
            WHEN jsonb_typeof(v -> 'amount_fen') NOT IN ('number', 'null') THEN 'amount_fen: not a number'
       END
FROM d CROSS JOIN LATERAL jsonb_array_elements(d.doc) WITH ORDINALITY AS e(v, n)
WHERE jsonb_typeof(d.doc) = 'array' AND jsonb_array_length(d.doc) <= $2
"""

# Why each line is refused (NULL: accepted), in two steps with statistics between them, so the
# duplicate search is planned for a million holders, not the few a CTE is guessed to hold.
# Duplicates are judged among otherwise good lines: the first one wins. CASE keeps the order
# of its tests, so ::bigint sees only digits.
_JUDGE = """
CREATE TEMP TABLE up_judged ON COMMIT DROP AS
SELECT l.line_no, l.citizen_id, h.holder_id, l.pre_detail,
       CASE WHEN l.amount_raw ~ '^[0-9]{1,12}$' THEN l.amount_raw::bigint END AS amount_fen,
       CASE WHEN l.pre_code IS NOT NULL THEN l.pre_code
            WHEN l.citizen_id IS NULL OR l.citizen_id !~ '^[0-9]{17}[0-9X]$' THEN 'malformed_citizen_id'
            WHEN h.holder_id IS NULL THEN 'unknown_citizen'
            WHEN l.amount_raw IS NULL THEN NULL
            WHEN l.amount_raw !~ '^[0-9]{1,12}$' THEN 'bad_amount'
            WHEN l.amount_raw::bigint NOT BETWEEN 1 AND $1 THEN 'bad_amount'
       END AS reason
FROM up_lines l LEFT JOIN holders h ON h.citizen_id = l.citizen_id
"""

_CLASSIFY = """
CREATE TEMP TABLE up_final ON COMMIT DROP AS
WITH dup AS (
    SELECT holder_id, min(line_no) AS first_line FROM up_judged WHERE reason IS NULL
    GROUP BY holder_id HAVING count(*) > 1
), r AS (
    SELECT j.line_no, j.citizen_id, j.holder_id, j.amount_fen, j.pre_detail, dup.first_line,
           coalesce(j.reason, CASE WHEN j.line_no > dup.first_line OR b.holder_id IS NOT NULL
                                   THEN 'duplicate' END) AS reason
    FROM up_judged j LEFT JOIN dup ON dup.holder_id = j.holder_id AND j.reason IS NULL
    LEFT JOIN programme_beneficiaries b ON b.programme_id = $1 AND b.holder_id = j.holder_id
)
SELECT line_no, citizen_id, holder_id, amount_fen, reason,
       CASE reason
           WHEN 'bad_line' THEN pre_detail
           WHEN 'malformed_citizen_id' THEN 'citizen_id: 17 digits and a check character'
           WHEN 'unknown_citizen' THEN 'no cardholder has this citizen_id'
           WHEN 'bad_amount' THEN coalesce(pre_detail, 'amount_fen: a whole number of fen from 1 to ' || $2::bigint)
           WHEN 'duplicate' THEN CASE WHEN line_no > first_line THEN 'the same citizen as line ' || first_line
                                      ELSE 'already on the programme''s list' END
           ELSE '' END AS detail
FROM r
"""


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise ApiError(413, f"body: larger than {MAX_UPLOAD_BYTES} bytes; split the list", field="body")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"body: larger than {MAX_UPLOAD_BYTES} bytes; split the list", field="body")
    return bytes(buf)


def _csv_parts(body: bytes) -> tuple[int, bytes]:
    """(columns, the lines after the header) of a CSV body; ApiError if it cannot be loaded."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    body = body.replace(b"\r\n", b"\n")
    first, _, rest = body.partition(b"\n")
    header = [h.strip().strip('"').lower() for h in first.decode("utf-8", "replace").split(",")]
    if header not in (["citizen_id"], ["citizen_id", "amount_fen"]):
        raise ApiError(422, "header: the first line must be citizen_id or citizen_id,amount_fen", field="header")
    if b"\x1e" in rest or b"\x1f" in rest or b"\x00" in rest:
        raise ApiError(422, "body: control characters in the CSV", field="body")
    # COPY ends its data at a line holding only \. : such a line would cut the list short
    if rest == b"\\." or rest.startswith(b"\\.\n") or b"\n\\.\n" in rest or rest.endswith(b"\n\\."):
        raise ApiError(422, "body: a line holds only \\.", field="body")
    n_lines = rest.count(b"\n") + (1 if rest and not rest.endswith(b"\n") else 0)
    if n_lines > MAX_UPLOAD_LINES:
        raise ApiError(413, f"body: more than {MAX_UPLOAD_LINES} lines; split the list", field="body")
    return len(header), rest


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), UPLOAD_COPY_CHUNK_BYTES):
        yield bytes(view[i:i + UPLOAD_COPY_CHUNK_BYTES])


@router.post("/programmes/{programme_id}/beneficiaries", response_model=UploadResult,
             openapi_extra={"requestBody": _UPLOAD_BODY},
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
    ctx = ctx_of(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("text/csv", "application/json"):
        raise ApiError(415, "content-type: send text/csv or application/json", field="content-type")
    body = await _read_body(request)
    fmt: Literal["csv", "json"] = "csv" if media == "text/csv" else "json"
    if fmt == "csv":
        n_cols, lines = _csv_parts(body)
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "body: not UTF-8", field="body") from None
    try:
        async with ctx.pool.acquire() as conn, conn.transaction():
            locked = await conn.fetchval(
                "SELECT programme_id FROM programmes WHERE programme_id = $1 FOR UPDATE", programme_id)
            if locked is None:  # the lock also keeps two uploads from judging duplicates at once
                raise ApiError(404, f"programme {programme_id} not found")
            await conn.execute(
                "CREATE TEMP TABLE up_lines (line_no bigint, citizen_id text, amount_raw text, pre_code text,"
                " pre_detail text)"
                " ON COMMIT DROP")
            if fmt == "csv":
                await conn.execute("CREATE TEMP TABLE up_csv (line_no bigint GENERATED ALWAYS AS IDENTITY,"
                                   " line text) ON COMMIT DROP")
                await conn.copy_to_table("up_csv", source=_chunks(lines), columns=["line"], format="csv",
                                         delimiter=_COPY_DELIMITER, quote=_COPY_QUOTE)
                await conn.execute(_CSV_LINES, n_cols)
            else:
                status = await conn.execute(_JSON_LINES, text, MAX_UPLOAD_LINES)
                if status.split()[-1] == "0":
                    kind, n_items = await conn.fetchrow(
                        "SELECT jsonb_typeof(d), CASE WHEN jsonb_typeof(d) = 'array' THEN jsonb_array_length(d) END"
                        " FROM (SELECT $1::jsonb AS d) x", text)
                    if kind != "array":
                        raise ApiError(422, f"body: a JSON array is expected, not {kind}", field="body")
                    if n_items > MAX_UPLOAD_LINES:
                        raise ApiError(413, f"body: more than {MAX_UPLOAD_LINES} items; split the list",
                                       field="body")
            n_lines = await conn.fetchval("SELECT count(*) FROM up_lines")
            await conn.execute("ANALYZE up_lines")  # a temp table has no statistics: plan the joins on real ones
            await conn.execute(f"SET LOCAL work_mem = '{UPLOAD_WORK_MEM}'")  # hash joins in memory, not on disk
            await conn.execute(_JUDGE, MAX_OP_FEN)
            await conn.execute("ANALYZE up_judged")
            await conn.execute(_CLASSIFY, programme_id, MAX_OP_FEN)
            upload_id = await conn.fetchval(
                "INSERT INTO programme_uploads (programme_id, format, uploaded_by) VALUES ($1, $2, $3)"
                " RETURNING upload_id", programme_id, fmt, op.name)
            # No ON CONFLICT: under the programme's lock the lines judged good hold no listed
            # holder and no duplicate, and speculative insertion cost more than twice as much
            # (2.8 s against 1.3 s a million). A conflict would be an error, never an overwrite.
            status = await conn.execute(
                "INSERT INTO programme_beneficiaries (programme_id, holder_id, amount_fen, upload_id)"
                " SELECT $1, holder_id, amount_fen, $2 FROM up_final WHERE reason IS NULL", programme_id, upload_id)
            accepted = int(status.split()[-1])
            if accepted >= ANALYZE_AFTER_ROWS:  # plan the run's joins on the list as it now is
                await conn.execute("ANALYZE programme_beneficiaries")
            await conn.execute(
                "INSERT INTO upload_rejects (upload_id, line_no, citizen_id, reason, detail)"
                " SELECT $1, line_no, left(coalesce(citizen_id, ''), 40), reason, detail FROM up_final"
                " WHERE reason IS NOT NULL", upload_id)
            by_reason = {r["reason"]: r["n"] for r in await conn.fetch(
                "SELECT reason, count(*) AS n FROM up_final WHERE reason IS NOT NULL GROUP BY reason ORDER BY reason")}
            rejected = sum(by_reason.values())
            shown = await _rejects(conn, upload_id, 0, SHOWN_REJECTS)
            await conn.execute("UPDATE programme_uploads SET lines = $2, accepted = $3, rejected = $4"
                               " WHERE upload_id = $1", upload_id, n_lines, accepted, rejected)
            total = await conn.fetchval("UPDATE programmes SET beneficiaries = beneficiaries + $2"
                                        " WHERE programme_id = $1 RETURNING beneficiaries", programme_id, accepted)
            result = UploadResult(upload_id=upload_id, programme_id=programme_id, format=fmt, lines=n_lines,
                                  accepted=accepted, rejected=rejected, rejected_by_reason=by_reason,
                                  rejected_lines=shown, more_rejected=rejected > len(shown), beneficiaries=total)
            await audit.record(conn, op, "programme.upload", f"programme:{programme_id}", None,
                               result.model_dump(exclude={"rejected_lines"}))
    except asyncpg.DataError as exc:  # not UTF-8, not JSON, not an array, a stray carriage return
        raise ApiError(422, f"body: cannot be read as {fmt}: {exc}", field="body") from None
    return result


async def _rejects(conn: asyncpg.Connection | asyncpg.Pool, upload_id: int, after_line: int,
                   limit: int) -> list[RejectedLine]:
    rows = await conn.fetch(
        "SELECT line_no, citizen_id, reason, detail FROM upload_rejects WHERE upload_id = $1 AND line_no > $2"
        " ORDER BY line_no LIMIT $3", upload_id, after_line, limit)
    return [RejectedLine(line=r["line_no"], citizen_id=r["citizen_id"], reason=r["reason"], detail=r["detail"])
            for r in rows]


@router.get("/programmes/{programme_id}/uploads/{upload_id}/rejects", response_model=RejectsPage)
async def upload_rejects(programme_id: ProgrammeId, upload_id: UploadId, request: Request,
                         after_line: Annotated[int, Query(ge=0, le=2**62)] = 0,
                         limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
                         op: Operator = Depends(require(Perm.READ))) -> RejectsPage:  # noqa: B008
    """Every rejected line of an upload, by line number."""
    pool = ctx_of(request).pool
    if await pool.fetchval("SELECT 1 FROM programme_uploads WHERE upload_id = $1 AND programme_id = $2",
                           upload_id, programme_id) is None:
        raise ApiError(404, f"upload {upload_id} of programme {programme_id} not found")
    items = await _rejects(pool, upload_id, after_line, limit)
    return RejectsPage(upload_id=upload_id, items=items, next_after_line=items[-1].line if len(items) == limit else None)


# -- runs ------------------------------------------------------------------------------------

@router.post("/programmes/{programme_id}/runs", status_code=202, response_model=Run,
             responses={503: {"description": "busy: as many runs as allowed are in progress; retry later"}})
async def start_run(programme_id: ProgrammeId, body: RunIn, request: Request,
                    op: Operator = Depends(require(Perm.PROGRAMMES))) -> Run:  # noqa: B008
    """Start the run of a period in the background, or resume it if the period exists (stopped,
    failed, interrupted, or done and the list has grown since). Each beneficiary is credited
    at most once per period, however often this is called."""
    ctx = ctx_of(request)
    runs = runs_of(request.app)
    async with runs.lock:
        prog = await ctx.pool.fetchrow("SELECT * FROM programmes WHERE programme_id = $1", programme_id)
        if prog is None:
            raise ApiError(404, f"programme {programme_id} not found")
        run_id = await ctx.pool.fetchval("SELECT run_id FROM disbursement_runs WHERE programme_id = $1"
                                         " AND period = $2", programme_id, body.period)
        if run_id is not None and runs.live(run_id) is not None:
            return (await _run(request, run_id)).model_copy(update={"resumed": True})
        if not runs.has_room():
            raise ApiError(503, "busy: as many disbursement runs as allowed are in progress; retry later")
        async with ctx.pool.acquire() as conn, conn.transaction():
            new_id = await conn.fetchval(
                "INSERT INTO disbursement_runs (programme_id, period, state) VALUES ($1, $2, 'running')"
                " ON CONFLICT (programme_id, period) DO UPDATE SET state = 'running', error = '',"
                " finished_at = NULL, updated_at = now() RETURNING run_id", programme_id, body.period)
            await audit.record(conn, op, "programme.run_start", f"programme:{programme_id}", None,
                               {"run_id": new_id, "period": body.period, "resumed": run_id is not None})
        runs.start(Runner(ctx, new_id, terms_of(prog), body.period, resumed=run_id is not None))
    return (await _run(request, new_id)).model_copy(update={"resumed": run_id is not None})


@router.post("/runs/{run_id}/stop", response_model=Run)
async def stop_run(run_id: RunId, request: Request,
                   op: Operator = Depends(require(Perm.PROGRAMMES))) -> Run:  # noqa: B008
    """Stop a run now; POST /programmes/{id}/runs with its period resumes it. Credits already
    on their way are not lost: the resume records them without crediting again."""
    before = await _run(request, run_id)
    stopped = await runs_of(request.app).stop(run_id)
    after = await _run(request, run_id)
    if stopped:
        await audit.record(ctx_of(request).pool, op, "programme.run_stop", f"programme:{before.programme_id}",
                           before.model_dump(mode="json"), after.model_dump(mode="json"))
    return after


@router.get("/runs/{run_id}", response_model=Run)
async def get_run(run_id: RunId, request: Request, op: Operator = Depends(require(Perm.READ))) -> Run:  # noqa: B008
    """Progress: items in total, credited, refused and pending, and the rate."""
    return await _run(request, run_id)


async def _run(request: Request, run_id: int) -> Run:
    row = await ctx_of(request).pool.fetchrow(
        "SELECT *, extract(epoch FROM (CASE WHEN state = 'running' THEN now() ELSE updated_at END) - resumed_at)"
        " AS session_s FROM disbursement_runs WHERE run_id = $1", run_id)
    if row is None:
        raise ApiError(404, f"run {run_id} not found")
    state = row["state"]
    if state == "running" and runs_of(request.app).live(run_id) is None:
        state = "interrupted"
    decided = row["credited"] + row["refused"]
    session_s = float(row["session_s"] or 0)
    rate = (decided - row["resumed_done"]) / session_s if session_s > 0 else 0.0
    return Run(run_id=run_id, programme_id=row["programme_id"], period=row["period"], state=state,
               total=row["total"], credited=row["credited"], refused=row["refused"],
               pending=row["total"] - decided, credited_fen=row["credited_fen"], rate_per_s=round(rate, 1),
               error=row["error"], started_at=row["started_at"], resumed_at=row["resumed_at"],
               finished_at=row["finished_at"], resumed=False)


@router.get("/runs/{run_id}/report", response_model=Report)
async def run_report(run_id: RunId, request: Request,
                     after_holder: Annotated[int, Query(ge=0, le=2**62)] = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     op: Operator = Depends(require(Perm.READ))) -> Report:  # noqa: B008
    """Items and fen by result, and a page of the refused beneficiaries with reasons."""
    run = await _run(request, run_id)
    pool = ctx_of(request).pool
    groups = await pool.fetch(
        "SELECT state, result, count(*) AS n, sum(amount_fen) AS fen FROM disbursement_items"
        " WHERE programme_id = $1 AND period = $2 GROUP BY state, result ORDER BY state, result",
        run.programme_id, run.period)
    by_result = [ResultCount(outcome=STATE_NAMES[g["state"]], result=result_name(g["state"], g["result"]),  # type: ignore[arg-type]
                             reason="" if g["state"] != REFUSED else refusal_reason(g["result"]),
                             items=g["n"], amount_fen=g["fen"]) for g in groups]
    rows = await pool.fetch(
        "SELECT i.holder_id, h.citizen_id, i.card_no, i.amount_fen, i.result FROM disbursement_items i"
        " JOIN holders h ON h.holder_id = i.holder_id WHERE i.programme_id = $1 AND i.period = $2"
        " AND i.state = $3 AND i.holder_id > $4 ORDER BY i.holder_id LIMIT $5",
        run.programme_id, run.period, REFUSED, after_holder, limit)
    refused = [RefusedItem(holder_id=r["holder_id"], citizen_id=r["citizen_id"], card_no=r["card_no"],
                           amount_fen=r["amount_fen"], result=result_name(REFUSED, r["result"]),
                           reason=refusal_reason(r["result"])) for r in rows]
    return Report(run=run, by_result=by_result, refused=refused,
                  next_after_holder=refused[-1].holder_id if len(refused) == limit else None)


