"""The journal in Postgres: its columns, and ``pg_append``, the fenced COPY a shard's
JournalWriter (``citycard/actors/journal_writer.py``) commits each group with."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from ..domain.taps import JournalRow
from ..errors import JournalHeadMoved, StoreError
from .migrate import journal_partition

JOURNAL_COLUMNS = JournalRow.__struct_fields__  # the row's fields are the columns, in order
Append = Callable[[list[tuple[Any, ...]]], Awaitable[None]]  # as actors.journal_writer.Append


def pg_append(conn: asyncpg.Connection, shard_id: int, schema: str, timeout_s: float | None = None) -> Append:
    """Commit rows to the shard's journal partition: one COPY and one commit, fenced on the head.

    ``timeout_s`` bounds the whole transaction, COMMIT included: when it passes, the connection
    is dropped (a hung ROLLBACK could wait as long as the COMMIT did) and StoreError raised. The
    rows may or may not be committed; the shard reloads from the record either way.
    """
    table = journal_partition(shard_id)

    async def append(records: list[tuple[Any, ...]]) -> None:
        first_lsn, last_lsn = records[0][0], records[-1][0]
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            conn.terminate()

        watchdog = None if timeout_s is None else asyncio.get_running_loop().call_later(timeout_s, expire)
        try:
            async with conn.transaction():
                # Fencing: the head must be where this writer's rows follow on. A shard Ray
                # gave up on but whose process still runs (a zombie) must not commit after
                # its successor: its rows would repeat lsns and taps. The row lock also
                # orders two writers of one shard.
                status = await conn.execute(
                    "UPDATE shard_heads SET lsn = $1, updated_at = now() WHERE shard_id = $2 AND lsn = $3",
                    last_lsn, shard_id, first_lsn - 1,
                )
                if status != "UPDATE 1":
                    raise JournalHeadMoved(f"shard {shard_id}: the journal head is not at lsn "
                                     f"{first_lsn - 1}: another writer owns this shard")
                await conn.copy_records_to_table(table, records=records, columns=JOURNAL_COLUMNS, schema_name=schema)
        except Exception as exc:
            if expired:
                raise StoreError(f"shard {shard_id}: commit of lsn {first_lsn}..{last_lsn} took over {timeout_s} s;"
                                 " connection dropped, outcome unknown") from exc
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()

    return append
