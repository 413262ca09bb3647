"""The audit log from the journal: a request that stopped between its money op and its audit
entry (a crash, a lost connection) leaves an op in the journal and no entry; this writes the
missing one, so every top-up, refund and cancellation the journal holds has exactly one entry.

A retry of such a request writes the entry itself (cards/money.py); this covers the requests
never retried. Ops younger than ``grace_ms`` are left to their own request, which may still be
about to write its entry.
"""

from dataclasses import dataclass

import asyncpg

from ..domain.ops import OpKind
from ..domain.purses import PURSE_NAMES
from ..persistence import audit, audit_gaps

RECONCILER = "journal"  # the audit entry's operator: nobody asked, the journal says it happened
# the services' key scopes (money.op_key) and the audit action of each
_ACTIONS = {"topup:": "money.top_up", "refund:": "money.refund", "cancel:": "card.cancel"}
_KINDS = {OpKind.TOP_UP: "topup:", OpKind.REFUND: "refund:", OpKind.CANCEL: "cancel:"}
BATCH_ROWS = 1000


@dataclass(frozen=True)
class Reconciled:
    checked: int  # op rows looked at
    written: int  # entries that were missing and are now written


def _entry(row: asyncpg.Record, shard_id: int) -> tuple[str, dict[str, object], str]:
    action = _ACTIONS[_KINDS[OpKind(row["kind"])]]
    deltas = {n: row[f"d_{n}"] for n in PURSE_NAMES if row[f"d_{n}"]}
    after: dict[str, object] = {"card_no": row["card_no"], "result": "OK", "journal_lsn": row["lsn"],
                                "applied_ms": row["applied_ms"]}
    if action == "card.cancel":
        after["refunded_fen"] = {n: -d for n, d in deltas.items()}
    else:
        after["purses_fen"] = deltas
        after["epurse_after_fen"] = row["balance_after_fen"]
    reason = f"reconciled from the journal (shard {shard_id}, lsn {row['lsn']}): its request wrote no entry"
    return action, after, reason


async def reconcile_shard(pool: asyncpg.Pool, shard_id: int, now_ms: int, grace_ms: int) -> Reconciled:
    """Write the missing entries of one shard's ops older than ``grace_ms``, in batches."""
    checked = written = 0
    while True:
        after_lsn = await audit_gaps.checked_up_to(pool, shard_id)
        found = await audit_gaps.unaudited(pool, shard_id, after_lsn, list(_ACTIONS), BATCH_ROWS)
        # stop at the first op still in its request's hands: the check resumes there next time
        young = next((i for i, r in enumerate(found) if r["applied_ms"] >= now_ms - grace_ms), len(found))
        rows = found[:young]
        if not rows:
            return Reconciled(checked, written)
        async with pool.acquire() as conn, conn.transaction():
            for row in rows:
                if row["audited"]:
                    continue
                action, after, reason = _entry(row, shard_id)
                if await audit.record(conn, RECONCILER, "reconciler", action, f"card:{row['card_no']}", None,
                                      after, reason, op_key=row["op_key"]) is not None:
                    written += 1
            await audit_gaps.mark_checked(conn, shard_id, rows[-1]["lsn"])
        checked += len(rows)
        if young < len(found) or len(found) < BATCH_ROWS:
            return Reconciled(checked, written)


async def reconcile(pool: asyncpg.Pool, n_shards: int, now_ms: int, grace_ms: int) -> Reconciled:
    checked = written = 0
    for shard_id in range(n_shards):
        got = await reconcile_shard(pool, shard_id, now_ms, grace_ms)
        checked, written = checked + got.checked, written + got.written
    return Reconciled(checked, written)
