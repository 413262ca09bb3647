"""A beneficiary upload as Postgres does it, in the caller's transaction: the lines loaded
into temporary tables (a CSV body by COPY, in chunks; a JSON body parsed by Postgres once),
judged line by line, the good ones listed and the rest kept as rejects with their reasons."""

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import asyncpg

from ..errors import CityCardError
from .programmes import ANALYZE_AFTER_ROWS, Conn

COPY_CHUNK_BYTES = 1 << 20
WORK_MEM = "64MB"  # per sort or hash of the upload's statements (one upload per programme at a time)
# The one column of a CSV line as COPY sees it: separator and quote bytes no text file has,
# so Postgres hands over each line whole and the fields are split in SQL.
COPY_DELIMITER, COPY_QUOTE = "\x1f", "\x1e"

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
WHERE CASE WHEN jsonb_typeof(d.doc) = 'array' THEN jsonb_array_length(d.doc) <= $2 ELSE false END
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


class UploadUnreadable(CityCardError):
    """A body Postgres could not load, said in our words (never Postgres's: its wording
    names our tables and statements); ``field`` is ``body`` or ``line N``, ``status`` the
    HTTP status to answer with (422 bad input, 413 too big for one upload)."""

    def __init__(self, message: str, field: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


# What a refused load means, by SQLSTATE (the class of the error, not its wording).
_WHY = {
    "22021": "not UTF-8",  # character_not_in_repertoire
    "22P04": "a stray carriage return; end lines with \\n or \\r\\n",  # bad_copy_file_format
    "22P05": "a string holds \\u0000, which cannot be stored",  # untranslatable_character
    "22P02": "not valid JSON",  # invalid_text_representation
}
_COPY_LINE = re.compile(r"^COPY \w+, line (\d+)")
_JSON_LINE = re.compile(r"^JSON data, line (\d+)")


def _unreadable(exc: asyncpg.PostgresError, fmt: str) -> UploadUnreadable:
    if isinstance(exc, asyncpg.ProgramLimitExceededError):
        return UploadUnreadable("body: too large or too deeply nested to load at once; split the list",
                                field="body", status=413)
    why = _WHY.get(exc.sqlstate or "", f"cannot be read as {fmt}")
    context = str(exc.as_dict().get("context", ""))
    if m := _COPY_LINE.match(context):  # COPY counts the lines after the header
        line = int(m.group(1)) + 1
        return UploadUnreadable(f"line {line}: {why}", field=f"line {line}")
    if m := _JSON_LINE.match(context):  # a line of the text, not an item of the array
        return UploadUnreadable(f"body: {why} (at line {m.group(1)} of the text)", field="body")
    return UploadUnreadable(f"body: {why}", field="body")


@contextmanager
def _in_our_words(fmt: str) -> Iterator[None]:
    """A load that Postgres refused, as UploadUnreadable; the transaction rolls back whole."""
    try:
        yield
    except (asyncpg.DataError, asyncpg.ProgramLimitExceededError) as exc:
        raise _unreadable(exc, fmt) from None


async def lock_programme(conn: asyncpg.Connection, programme_id: int) -> bool:
    """Lock the programme's row till the transaction ends (False: no such programme); the lock
    also keeps two uploads from judging duplicates at once."""
    return await conn.fetchval("SELECT programme_id FROM programmes WHERE programme_id = $1 FOR UPDATE",
                               programme_id) is not None


async def _create_lines(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TEMP TABLE up_lines (line_no bigint, citizen_id text, amount_raw text, pre_code text,"
                       " pre_detail text) ON COMMIT DROP")


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), COPY_CHUNK_BYTES):
        yield bytes(view[i:i + COPY_CHUNK_BYTES])


async def load_csv(conn: asyncpg.Connection, lines: bytes, n_cols: int) -> None:
    """The CSV's lines after its header (checked: no COPY control bytes, no end-of-data line)
    into up_lines, streamed to COPY in chunks; ``n_cols``: the header's columns."""
    await _create_lines(conn)
    await conn.execute("CREATE TEMP TABLE up_csv (line_no bigint GENERATED ALWAYS AS IDENTITY,"
                       " line text) ON COMMIT DROP")
    with _in_our_words("csv"):
        await conn.copy_to_table("up_csv", source=_chunks(lines), columns=["line"], format="csv",
                                 delimiter=COPY_DELIMITER, quote=COPY_QUOTE)
        await conn.execute(_CSV_LINES, n_cols)


async def load_json(conn: asyncpg.Connection, text: str, max_items: int) -> int:
    """The JSON array's items into up_lines; how many (0 as well for a body that is not an
    array or has more than ``max_items``: see ``json_shape``)."""
    await _create_lines(conn)
    with _in_our_words("json"):
        status = await conn.execute(_JSON_LINES, text, max_items)
    return int(status.split()[-1])


async def json_shape(conn: asyncpg.Connection, text: str) -> tuple[str, int | None]:
    """The JSON body's type, and its length if it is an array."""
    with _in_our_words("json"):
        kind, n_items = await conn.fetchrow(
            "SELECT jsonb_typeof(d), CASE WHEN jsonb_typeof(d) = 'array' THEN jsonb_array_length(d) END"
            " FROM (SELECT $1::jsonb AS d) x", text)
    return str(kind), n_items


async def judge(conn: asyncpg.Connection, programme_id: int, max_fen: int) -> int:
    """Every loaded line judged (up_final: its holder, amount, and reason if refused); returns
    how many lines were loaded."""
    n_lines = int(await conn.fetchval("SELECT count(*) FROM up_lines"))
    await conn.execute("ANALYZE up_lines")  # a temp table has no statistics: plan the joins on real ones
    await conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")  # hash joins in memory, not on disk
    await conn.execute(_JUDGE, max_fen)
    await conn.execute("ANALYZE up_judged")
    await conn.execute(_CLASSIFY, programme_id, max_fen)
    return n_lines


async def new_upload(conn: asyncpg.Connection, programme_id: int, fmt: str, uploaded_by: str) -> int:
    return int(await conn.fetchval(
        "INSERT INTO programme_uploads (programme_id, format, uploaded_by) VALUES ($1, $2, $3)"
        " RETURNING upload_id", programme_id, fmt, uploaded_by))


async def accept(conn: asyncpg.Connection, programme_id: int, upload_id: int) -> int:
    """The lines judged good onto the programme's list; how many."""
    # No ON CONFLICT: under the programme's lock the lines judged good hold no listed
    # holder and no duplicate, and speculative insertion cost more than twice as much
    # (2.8 s against 1.3 s a million). A conflict would be an error, never an overwrite.
    status = await conn.execute(
        "INSERT INTO programme_beneficiaries (programme_id, holder_id, amount_fen, upload_id)"
        " SELECT $1, holder_id, amount_fen, $2 FROM up_final WHERE reason IS NULL", programme_id, upload_id)
    accepted = int(status.split()[-1])
    if accepted >= ANALYZE_AFTER_ROWS:  # plan the run's joins on the list as it now is
        await conn.execute("ANALYZE programme_beneficiaries")
    return accepted


async def reject(conn: asyncpg.Connection, upload_id: int) -> dict[str, int]:
    """The lines refused kept as the upload's rejects; how many by reason."""
    await conn.execute(
        "INSERT INTO upload_rejects (upload_id, line_no, citizen_id, reason, detail)"
        " SELECT $1, line_no, left(coalesce(citizen_id, ''), 40), reason, detail FROM up_final"
        " WHERE reason IS NOT NULL", upload_id)
    return {r["reason"]: r["n"] for r in await conn.fetch(
        "SELECT reason, count(*) AS n FROM up_final WHERE reason IS NOT NULL GROUP BY reason ORDER BY reason")}


async def close_upload(conn: asyncpg.Connection, programme_id: int, upload_id: int, lines: int, accepted: int,
                       rejected: int) -> int:
    """The upload's counts recorded and the programme's list grown; the list's length now."""
    await conn.execute("UPDATE programme_uploads SET lines = $2, accepted = $3, rejected = $4"
                       " WHERE upload_id = $1", upload_id, lines, accepted, rejected)
    return int(await conn.fetchval("UPDATE programmes SET beneficiaries = beneficiaries + $2"
                                   " WHERE programme_id = $1 RETURNING beneficiaries", programme_id, accepted))


async def upload_exists(conn: Conn, programme_id: int, upload_id: int) -> bool:
    return await conn.fetchval("SELECT 1 FROM programme_uploads WHERE upload_id = $1 AND programme_id = $2",
                               upload_id, programme_id) is not None


async def rejects(conn: Conn, upload_id: int, after_line: int, limit: int) -> list[asyncpg.Record]:
    """The upload's rejected lines after ``after_line``, by line, at most ``limit``."""
    return list(await conn.fetch(
        "SELECT line_no, citizen_id, reason, detail FROM upload_rejects WHERE upload_id = $1 AND line_no > $2"
        " ORDER BY line_no LIMIT $3", upload_id, after_line, limit))
