"""A programme's beneficiary list, uploaded as CSV or JSON: citizen IDs resolved to holders,
every refused line named with its reason, nothing half-written. Postgres does the work in one
transaction (``persistence/programme_uploads.py``: COPY for CSV, one parse for JSON), so a
million lines never become Python objects."""

from dataclasses import dataclass
from typing import Literal

import asyncpg

from ..domain.ops import MAX_OP_FEN
from ..persistence import audit
from ..persistence import programme_uploads as store
from .errors import Invalid, NotFound, TooLarge
from .programmes import jsonable
from .who import Who

MAX_UPLOAD_BYTES = 80 * 2**20  # a million lines with amounts are ~26 MiB as CSV, ~48 MiB as JSON
MAX_UPLOAD_LINES = 2_000_000
SHOWN_REJECTS = 1000  # rejected lines in the upload's answer; the rest: rejects_page

Format = Literal["csv", "json"]
Reason = Literal["unknown_citizen", "malformed_citizen_id", "bad_amount", "duplicate", "bad_line"]


@dataclass(frozen=True)
class RejectedLine:
    line: int  # CSV: the line in the file (the header is line 1); JSON: the item, from 1
    citizen_id: str
    reason: Reason
    detail: str


@dataclass(frozen=True)
class Upload:
    upload_id: int
    programme_id: int
    format: Format
    lines: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    rejected_lines: list[RejectedLine]  # the first SHOWN_REJECTS, by line
    more_rejected: bool  # the rest: rejects_page
    beneficiaries: int  # the programme's list after this upload


@dataclass(frozen=True)
class RejectsPage:
    upload_id: int
    items: list[RejectedLine]
    next_after_line: int | None


def too_large(what: str) -> TooLarge:
    return TooLarge(f"body: {what}; split the list", field="body")


def csv_parts(body: bytes) -> tuple[int, bytes]:
    """(columns, the lines after the header) of a CSV body, checked so that COPY loads every
    line whole; Invalid or TooLarge if it cannot be loaded."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    body = body.replace(b"\r\n", b"\n")
    first, _, rest = body.partition(b"\n")
    header = [h.strip().strip('"').lower() for h in first.decode("utf-8", "replace").split(",")]
    if header not in (["citizen_id"], ["citizen_id", "amount_fen"]):
        raise Invalid("header: the first line must be citizen_id or citizen_id,amount_fen", field="header")
    if b"\x1e" in rest or b"\x1f" in rest or b"\x00" in rest:
        raise Invalid("body: control characters in the CSV", field="body")
    # COPY ends its data at a line holding only \. : such a line would cut the list short
    if rest == b"\\." or rest.startswith(b"\\.\n") or b"\n\\.\n" in rest or rest.endswith(b"\n\\."):
        raise Invalid("body: a line holds only \\.", field="body")
    n_lines = rest.count(b"\n") + (1 if rest and not rest.endswith(b"\n") else 0)
    if n_lines > MAX_UPLOAD_LINES:
        raise too_large(f"more than {MAX_UPLOAD_LINES} lines")
    return len(header), rest


def json_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("body: not UTF-8", field="body") from None


async def _load_json(conn: asyncpg.Connection, text: str) -> None:
    if await store.load_json(conn, text, MAX_UPLOAD_LINES) == 0:  # empty, or not a list we take
        kind, n_items = await store.json_shape(conn, text)
        if kind != "array":
            raise Invalid(f"body: a JSON array is expected, not {kind}", field="body")
        if n_items is not None and n_items > MAX_UPLOAD_LINES:
            raise too_large(f"more than {MAX_UPLOAD_LINES} items")


async def upload(pool: asyncpg.Pool, who: Who, programme_id: int, fmt: Format, body: bytes) -> Upload:
    """Add the body's beneficiaries to the programme's list. An amount left out or empty is
    the programme's. Invalid: a body that cannot be read at all (nothing is written);
    NotFound: no such programme."""
    if fmt == "csv":
        n_cols, lines = csv_parts(body)
    else:
        text = json_text(body)
    try:
        async with pool.acquire() as conn, conn.transaction():
            if not await store.lock_programme(conn, programme_id):
                raise NotFound(f"programme {programme_id} not found")
            if fmt == "csv":
                await store.load_csv(conn, lines, n_cols)
            else:
                await _load_json(conn, text)
            result = await _judge_and_list(conn, who, programme_id, fmt)
            after = {k: v for k, v in jsonable(result).items() if k != "rejected_lines"}
            await audit.record(conn, who.name, who.role, "programme.upload", f"programme:{programme_id}", None,
                               after)
    except asyncpg.DataError:  # a later statement's refusal: said in our words, never Postgres's
        raise Invalid(f"body: cannot be read as {fmt}: a value in it is not what its column takes",
                      field="body") from None
    return result


async def _judge_and_list(conn: asyncpg.Connection, who: Who, programme_id: int, fmt: Format) -> Upload:
    """The loaded lines judged, the good ones listed, the rest kept as rejects."""
    n_lines = await store.judge(conn, programme_id, MAX_OP_FEN)
    upload_id = await store.new_upload(conn, programme_id, fmt, who.name)
    accepted = await store.accept(conn, programme_id, upload_id)
    by_reason = await store.reject(conn, upload_id)
    rejected = sum(by_reason.values())
    shown = await _rejects(conn, upload_id, 0, SHOWN_REJECTS)
    total = await store.close_upload(conn, programme_id, upload_id, n_lines, accepted, rejected)
    return Upload(upload_id=upload_id, programme_id=programme_id, format=fmt, lines=n_lines, accepted=accepted,
                  rejected=rejected, rejected_by_reason=by_reason, rejected_lines=shown,
                  more_rejected=rejected > len(shown), beneficiaries=total)


async def _rejects(conn: asyncpg.Connection | asyncpg.Pool, upload_id: int, after_line: int,
                   limit: int) -> list[RejectedLine]:
    return [RejectedLine(line=r["line_no"], citizen_id=r["citizen_id"], reason=r["reason"], detail=r["detail"])
            for r in await store.rejects(conn, upload_id, after_line, limit)]


async def rejects_page(pool: asyncpg.Pool, programme_id: int, upload_id: int, after_line: int,
                       limit: int) -> RejectsPage:
    """Every rejected line of an upload, by line number, a page at a time; NotFound."""
    if not await store.upload_exists(pool, programme_id, upload_id):
        raise NotFound(f"upload {upload_id} of programme {programme_id} not found")
    items = await _rejects(pool, upload_id, after_line, limit)
    return RejectsPage(upload_id=upload_id, items=items,
                       next_after_line=items[-1].line if len(items) == limit else None)
